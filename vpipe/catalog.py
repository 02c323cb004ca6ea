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

from typing import NamedTuple

from vpipe.errors import ConfigError

#: ``vpipe.device.DEVICES``.
DEVICES = ("auto", "cpu", "cuda")

#: ``vpipe.data.registry.DATASETS``, sorted.
DATASETS = ("csv", "folder", "hmdb51", "kinetics", "synthetic", "ucf101")

#: ``vpipe.models.list_backbones()``.
BACKBONES = ("clip", "hoghofmbh", "i3d", "li3d", "r3d50", "resnet101", "resnet50", "vgg16", "videomae", "vjepa")

#: ``vpipe.models.heads.list_heads()``.
HEADS = ("bilstm-softagg", "deep-fusion", "st-manet", "vcm-sdd")

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
