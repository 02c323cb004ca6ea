"""Models: feature backbones (``vpipe.models.backbone``) and their weight loading."""

from vpipe.models.backbones import Backbone, BackboneSpec, backbone, list_backbones, register_backbone
from vpipe.models.weights import WeightsInfo, load_weights, sha256_file

__all__ = [
    "Backbone",
    "BackboneSpec",
    "WeightsInfo",
    "backbone",
    "list_backbones",
    "load_weights",
    "register_backbone",
    "sha256_file",
]
