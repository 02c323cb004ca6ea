"""Names and defaults the command line shows before it imports any heavy module.

``vpipe --help``, each command's ``--help`` and the choice lists of ``--backbone``,
``--sampler`` ... need the names of what is registered. The registries themselves
live next to the code they register (backbones and heads with torch, datasets with
pandas, samplers with pyarrow), and importing them costs more than a second before a
word is printed. So the names are written here once more, as plain data.

A copy can drift: ``tests/test_cli_imports.py`` checks that every entry here equals
what its registry or module holds, so a new backbone, head, dataset or sampler that
is not added here fails the suite instead of silently missing from ``--help``.
"""

from __future__ import annotations

import sys
import warnings
from typing import TYPE_CHECKING, NamedTuple

from vpipe.errors import ConfigError

if TYPE_CHECKING:
    from vpipe.head_specs import HeadSpec

#: ``vpipe.device.DEVICES``.
DEVICES = ("auto", "cpu", "cuda")

#: ``vpipe.data.registry.DATASETS``, sorted.
DATASETS = ("csv", "folder", "hmdb51", "kinetics", "synthetic", "ucf101")

#: ``vpipe.models.list_backbones()``.
BACKBONES = ("clip", "hoghofmbh", "i3d", "li3d", "r3d50", "resnet101", "resnet50", "vgg16", "videomae", "vjepa")

#: ``vpipe.models.heads.list_heads()``.
HEADS = ("bilstm-softagg", "deep-fusion", "st-manet", "vcm-sdd")

#: ``describe_head(name).parameters`` (at 101 classes) and ``.hooks`` for every built-in
#: head, so that ``vpipe heads`` lists them without building each model under torch.
HEAD_PARAMETERS: dict[str, int] = {
    "bilstm-softagg": 28214885, "deep-fusion": 119050922, "st-manet": 128636133, "vcm-sdd": 6923621,
}  # fmt: skip
HEAD_HOOKS: dict[str, list[str]] = {
    "bilstm-softagg": ["prepare", "external_files"], "deep-fusion": ["prepare", "external_files"],
    "st-manet": ["prepare", "training_loss"], "vcm-sdd": ["prepare"],
}  # fmt: skip


def describe_heads() -> list[dict[str, object]]:
    """``describe_head(name)`` of every head, as ``vpipe heads`` lists them, sorted by name.

    The built-in heads come from their declarations and the tables above, without torch;
    a head registered at run time (only possible once the registry is imported) from the
    registry.
    """
    from vpipe.head_specs import HEAD_SPECS, describe_spec

    rows = {
        name: describe_spec(HEAD_SPECS[name], parameters=HEAD_PARAMETERS[name], hooks=list(HEAD_HOOKS[name]))
        for name in HEADS
    }
    registry = sys.modules.get("vpipe.models.heads.registry")
    if registry is not None:
        rows |= {name: registry.describe_head(name).__dict__ for name in registry.list_heads() if name not in rows}
    return [rows[name] for name in sorted(rows)]


def describe_backbones() -> list[dict[str, object]]:
    """Every backbone as ``vpipe backbones`` lists it, sorted by name: the built-in ones
    from :data:`BACKBONE_LISTING` and their plans, without building a model; one
    registered at run time (only possible once the registry is imported) from its spec."""
    from vpipe.video.plan import sampler_config

    rows = {name: dict(listing) for name, listing in BACKBONE_LISTING.items()}
    registry = sys.modules.get("vpipe.models.backbones.registry")
    if registry is not None:
        for name in registry.list_backbones():
            if name not in rows:
                with warnings.catch_warnings():  # built without weights only to be described
                    warnings.simplefilter("ignore")
                    rows[name] = _listing(registry.backbone(name).spec)
    described = []
    for name in sorted(rows):
        plan = backbone_plan(name)
        params = sampler_config(plan.sampler, **plan.options).params()
        described.append({"name": name, **rows[name], "plan": {**params, "name": plan.name, "sampler": plan.sampler}})
    return described


def _listing(spec: object) -> dict[str, object]:
    """The :data:`BACKBONE_LISTING` entry of a built backbone's spec."""
    return {
        "params": spec.num_params,
        "input": spec.input_kind,
        "input_shape": list(spec.default_input_shape),
        "clip_length": spec.clip_length,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "layers": {k: list(v) for k, v in spec.layer_shapes().items()},
        "checkpoint_layout": spec.checkpoint_layout,
        "licence": spec.licence,
    }


def head_spec(name: str) -> type[HeadSpec]:
    """What head ``name`` declares (options, training defaults, inputs, tag, files), torch-free.

    A built-in head's declaration is its class in :mod:`vpipe.head_specs`, which the
    registered head inherits; a head registered at run time is its registered class, so
    asking for it imports the registry (and torch), which registered it in the first place.
    """
    from vpipe.head_specs import HEAD_SPECS

    if name in HEAD_SPECS:
        return HEAD_SPECS[name]
    from vpipe.models.heads import head_class

    return head_class(name)

#: ``vpipe.video.plan.SAMPLERS``.
SAMPLERS = ("li3d", "uniform", "tsn", "dense", "strided")

#: ``vpipe.encode.classic.METHODS``.
ENCODE_METHODS = ("bof", "vlad", "fv")

#: ``vpipe.encode.budget.DEFAULT_MEMORY_BUDGET_TEXT``.
ENCODE_MEMORY_BUDGET = "3G"

#: ``vpipe.stages.encode.DEFAULT_PCA``.
DEFAULT_PCA = "auto"

#: ``vpipe.data.synthetic.DEFAULT_VIDEOS_PER_CLASS``.
SYNTHETIC_VIDEOS_PER_CLASS = 10

#: ``vpipe.models.backbones.registry.backbone_defaults(name)`` for every backbone: the
#: option defaults each extract fingerprint covers, read by ``vpipe status`` without torch.
BACKBONE_DEFAULTS: dict[str, dict[str, object]] = {
    "clip": {"size": "b32", "activation": "quickgelu", "torchscript": False, "flow_stack": 5},
    "hoghofmbh": {"step": 3, "stride": 1, "cell": 16, "camera": "median"},
    "i3d": {},
    "li3d": {},
    "r3d50": {"grid": (4, 4)},
    "resnet101": {"grid": None, "flow_stack": 5},
    "resnet50": {"grid": None, "flow_stack": 5},
    "vgg16": {"grid": None, "flow_stack": 4},
    "videomae": {"size": "base"},
    "vjepa": {"size": "large", "grid": False},
}


#: (mean, std) of the inputs: torchvision's ImageNet statistics, the [-1, 1] scaling of the
#: Inception nets, and CLIP's own.
_IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
_SYMMETRIC = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
_CLIP = ([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])


def _listed(
    params: int,
    input_shape: list[int],
    layers: dict[str, list[int]],
    checkpoint_layout: str,
    normalisation: tuple[list[float], list[float]] = _IMAGENET,
    licence: str = "",
) -> dict[str, object]:
    """One :data:`BACKBONE_LISTING` entry. As in ``BackboneSpec.default_input_shape``, a clip
    backbone's input is (C, T, H, W) with T its clip length, a frame backbone's (C, H, W)."""
    clip = len(input_shape) == 4
    mean, std = normalisation
    return {
        "params": params, "input": "clip" if clip else "frames", "input_shape": input_shape,
        "clip_length": input_shape[1] if clip else 1, "mean": list(mean), "std": list(std),
        "layers": {name: list(shape) for name, shape in layers.items()},
        "checkpoint_layout": checkpoint_layout, "licence": licence,
    }  # fmt: skip


_TORCHVISION_RESNET = {"pool": [2048], "grid": [2048, 7, 7]}

#: What ``vpipe backbones`` lists of each backbone's ``BackboneSpec`` (parameters, input,
#: normalisation, cached layers, checkpoint layout, licence), so that the listing builds no
#: model under torch (a test checks every entry against the built model's spec).
BACKBONE_LISTING: dict[str, dict[str, object]] = {
    "clip": _listed(
        87849216, [3, 224, 224], {"pool": [512], "cls": [768]},
        "OpenAI / open_clip CLIP (visual.conv1, visual.transformer.resblocks.N, visual.proj) or transformers "
        "CLIPVisionModelWithProjection (vision_model.*, visual_projection)",
        _CLIP,
    ),
    "hoghofmbh": _listed(
        0, [5, 16, 112, 112], {"pool": [14, 504], "local": [180, 504]}, "none",
        ([0.0, 0.0, 0.0, 0.5, 0.5], [1.0, 1.0, 1.0, 0.025, 0.025]),
    ),
    "i3d": _listed(12287264, [3, 64, 224, 224], {"pool": [8, 1024]}, "pytorch-i3d InceptionI3d", _SYMMETRIC),
    "li3d": _listed(
        8047904, [3, 64, 224, 224], {"pool": [8, 1024]}, "vpipe LI3D, or pytorch-i3d InceptionI3d (converted)",
        _SYMMETRIC,
    ),
    "r3d50": _listed(
        46198976, [3, 16, 112, 112],
        {"layer1": [256, 8, 4, 4], "layer2": [512, 4, 4, 4], "layer3": [1024, 2, 4, 4], "layer4": [2048, 1, 4, 4],
         "pool": [2048]},
        "3D-ResNets-PyTorch generate_model(50)",
        ([0.4345, 0.4051, 0.3775], [0.2768, 0.2713, 0.2737]),
    ),
    "resnet101": _listed(42500160, [3, 224, 224], _TORCHVISION_RESNET, "torchvision ResNet"),
    "resnet50": _listed(23508032, [3, 224, 224], _TORCHVISION_RESNET, "torchvision ResNet"),
    "vgg16": _listed(117479232, [3, 224, 224], {"conv5_3": [512, 14, 14], "fc6": [4096]}, "torchvision VGG"),
    "videomae": _listed(
        86227200, [3, 16, 224, 224], {"pool": [768]},
        "official VideoMAE .pth (patch_embed/blocks/fc_norm) or transformers VideoMAE "
        "(videomae.embeddings/encoder.layer)",
        licence="CC-BY-NC-4.0 (published VideoMAE weights)",
    ),
    "vjepa": _listed(
        303885312, [3, 16, 224, 224], {"pool": [1024]},
        "official V-JEPA .pth.tar (target_encoder/encoder: patch_embed, pos_embed, blocks.N.attn.qkv, norm) or "
        "transformers VJEPA2Model (encoder.embeddings.patch_embeddings, encoder.layer.N.attention.query, "
        "encoder.layernorm)",
        licence="CC-BY-NC-4.0 (published V-JEPA and V-JEPA 2 weights)",
    ),
}  # fmt: skip


class DefaultPlan(NamedTuple):
    """The plan a backbone samples with when the user names no sampler: its paper's.

    ``name`` is the plan's file name (``plans/<name>.parquet``) and what ``vpipe extract``
    reads without ``--plan``; ``options`` replace the sampler's own defaults.
    """

    name: str
    sampler: str
    options: dict[str, object]


#: The sampler of a backbone that declares no plan, and the name of its plan.
DEFAULT_SAMPLER = "li3d"

#: ``backbone_plan(name)`` for the backbones that declare one (sampler, options); the plan
#: is named after the backbone. The others take :data:`DEFAULT_SAMPLER` as it is.
BACKBONE_PLANS: dict[str, tuple[str, dict[str, object]]] = {
    "clip": ("uniform", {"count": 8, "size": 224, "short_side": 224}),
    "videomae": ("strided", {"frames": 16, "step": 4, "clips": 5, "size": 224, "short_side": 224}),
    "vjepa": ("strided", {"frames": 16, "step": 4, "clips": 8, "size": 224, "short_side": 256}),
}

#: ``backbone_version(name)`` where it is not 1.
BACKBONE_VERSIONS: dict[str, int] = {"hoghofmbh": 3}

#: Backbones for which ``is_weightless(name)`` holds.
WEIGHTLESS_BACKBONES = ("hoghofmbh",)

#: ``backbone_inputs(name, stream)`` where it is not ``(stream,)``.
BACKBONE_INPUTS: dict[str, tuple[str, ...]] = {"hoghofmbh": ("rgb", "flow")}


def _registered_elsewhere(name: str) -> bool:
    """A backbone registered at run time (not in the tables): only its registry knows it."""
    return name not in BACKBONE_DEFAULTS


def backbone_defaults(name: str) -> dict[str, object]:
    """As the registry's function of that name, from :data:`BACKBONE_DEFAULTS`."""
    if _registered_elsewhere(name):
        from vpipe.models.backbones import registry

        return registry.backbone_defaults(name)
    return dict(BACKBONE_DEFAULTS[name])


def backbone_plan(name: str) -> DefaultPlan:
    """As the registry's function of that name, from :data:`BACKBONE_PLANS`."""
    if _registered_elsewhere(name):
        from vpipe.models.backbones import registry

        return registry.backbone_plan(name)
    if name not in BACKBONE_PLANS:
        return DefaultPlan(DEFAULT_SAMPLER, DEFAULT_SAMPLER, {})
    sampler, options = BACKBONE_PLANS[name]
    return DefaultPlan(name, sampler, dict(options))


def backbone_version(name: str) -> int:
    """As the registry's function of that name, from :data:`BACKBONE_VERSIONS`."""
    if _registered_elsewhere(name):
        from vpipe.models.backbones import registry

        return registry.backbone_version(name)
    return BACKBONE_VERSIONS.get(name, 1)


def backbone_inputs(name: str, stream: str) -> tuple[str, ...]:
    """As the registry's function of that name, from :data:`BACKBONE_INPUTS`."""
    if _registered_elsewhere(name):
        from vpipe.models.backbones import registry

        return registry.backbone_inputs(name, stream)
    return BACKBONE_INPUTS.get(name, (stream,))


def is_weightless(name: str) -> bool:
    """As the registry's function of that name, from :data:`WEIGHTLESS_BACKBONES`."""
    if _registered_elsewhere(name):
        from vpipe.models.backbones import registry

        return registry.is_weightless(name)
    return name in WEIGHTLESS_BACKBONES


#: ``vpipe.flow.tvl1.tvl1``'s keyword-only parameters and their defaults, in its order: the
#: flow settings a flow fingerprint resolves, read by ``vpipe status`` without torch.
TVL1_DEFAULTS: dict[str, object] = {
    "tau": 0.25, "lambda_": 0.15, "theta": 0.3, "nscales": 5, "warps": 5, "epsilon": 0.01,
    "inner_iterations": 30, "outer_iterations": 10, "scale_step": 0.8, "gamma": 0.0,
    "median_filtering": 5, "channel_order": "rgb", "sync_every": None, "shrink": True,
}  # fmt: skip

#: Parameters of ``tvl1`` that change speed, never the flow.
TVL1_SPEED_ONLY = frozenset({"sync_every", "shrink"})

#: OpenCV ``DualTVL1OpticalFlow``'s defaults (and the decoders' channel order): the fixed
#: reference a flow cache's fingerprint is taken against. Frozen on purpose, unlike
#: :data:`TVL1_DEFAULTS`, which this table only happens to equal today.
OPENCV_DEFAULTS: dict[str, object] = {
    "tau": 0.25, "lambda_": 0.15, "theta": 0.3, "nscales": 5, "warps": 5, "epsilon": 0.01,
    "inner_iterations": 30, "outer_iterations": 10, "scale_step": 0.8, "gamma": 0.0,
    "median_filtering": 5, "channel_order": "rgb",
}  # fmt: skip


def resolved_tvl1_params(given: dict[str, object]) -> dict[str, object]:
    """Every parameter that shapes the flow, with ``tvl1``'s defaults for those not given."""
    unknown = sorted(set(given) - set(TVL1_DEFAULTS))
    if unknown:
        raise ConfigError(f"tvl1: unknown parameter(s) {', '.join(unknown)}; known: {', '.join(TVL1_DEFAULTS)}")
    defaults = {name: value for name, value in TVL1_DEFAULTS.items() if name not in TVL1_SPEED_ONLY}
    return {**defaults, **{k: v for k, v in given.items() if k not in TVL1_SPEED_ONLY}}


def tvl1_params_off_reference(given: dict[str, object]) -> dict[str, object]:
    """The resolved parameters that differ from :data:`OPENCV_DEFAULTS`: what a flow
    fingerprint hashes.

    Hashing the difference from a frozen reference, rather than the full resolved set,
    gives both properties a cache needs: ``-o nscales=5`` typed out equals the implicit
    default, and a changed default in ``tvl1`` (hence in :data:`TVL1_DEFAULTS`, which a
    test keeps equal to it) changes the fingerprint. It also keeps the fingerprint of
    every cache computed with OpenCV's settings what it was before the settings were
    resolved, so no existing cache is recomputed for the change.
    """
    resolved = resolved_tvl1_params(given)
    return {k: v for k, v in resolved.items() if k not in OPENCV_DEFAULTS or v != OPENCV_DEFAULTS[k]}
