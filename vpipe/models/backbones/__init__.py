"""Feature backbones: one family per module, all reachable through the registry."""

from vpipe.models.backbones import clip, hoghofmbh, inception3d, resnet2d, resnet3d, vgg, videomae, vjepa
from vpipe.models.backbones.registry import (
    Backbone,
    BackboneSpec,
    backbone,
    list_backbones,
    register_backbone,
)

__all__ = [
    "Backbone",
    "BackboneSpec",
    "backbone",
    "clip",
    "hoghofmbh",
    "inception3d",
    "list_backbones",
    "register_backbone",
    "resnet2d",
    "resnet3d",
    "vgg",
    "videomae",
    "vjepa",
]
