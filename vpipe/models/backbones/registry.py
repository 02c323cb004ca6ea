"""Backbone registry and the data that describes each backbone's weight layout.

Stage code never retypes an input size, a mean/std or a checkpoint converter: it asks
the built module for its :class:`BackboneSpec`. Builders register under a name with
:func:`register_backbone`; :func:`backbone` builds one, loads its weights (or says loudly
that it has none) and returns it in eval mode, because the cache only ever stores
inference features.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from vpipe.catalog import DEFAULT_SAMPLER, DefaultPlan
from vpipe.errors import ConfigError
from vpipe.models.weights import WeightsInfo, load_weights
from vpipe.pipeline.fingerprint import stable_seed

STREAMS = ("rgb", "flow")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Flow fields scaled to [0, 1] centre on 0.5; their spread is taken as ImageNet's mean std,
#: so a flow conv initialised from an rgb one sees inputs of the same scale.
FLOW_MEAN = 0.5
FLOW_STD = sum(IMAGENET_STD) / 3

StateDict = dict[str, Tensor]
CheckpointFilter = Callable[[StateDict, nn.Module], StateDict]
ShapeFn = Callable[[tuple[int, ...]], dict[str, tuple[int, ...]]]
CheckpointReader = Callable[[Path], StateDict]


@dataclass(frozen=True)
class BackboneSpec:
    """What a backbone expects as input, what it caches, and how its checkpoints look.

    ``mean``/``std`` apply to pixel (or flow) values scaled to [0, 1]; pytorch-i3d's
    [-1, 1] scaling is ``mean = std = 0.5``. ``clip_length`` counts the frames one input
    covers: T for clip backbones, 1 for an rgb frame and L for a stack of L flow fields.
    ``head_keys`` are checkpoint key prefixes of classifier layers the backbone leaves out
    (their shape depends on the class count); loading drops them even when strict.
    ``licence`` names the published checkpoints' licence where it restricts use
    (empty when it does not). ``checkpoint_reader`` replaces the generic file reader for
    families whose files are not a (nested) state dict, such as a TorchScript archive.
    """

    name: str
    stream: Literal["rgb", "flow"]
    input_kind: Literal["clip", "frames"]
    in_channels: int
    clip_length: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layers: tuple[str, ...]
    shape_fn: ShapeFn
    checkpoint_layout: str
    first_conv: str
    head_keys: tuple[str, ...] = ()
    checkpoint_filter: CheckpointFilter | None = None
    num_params: int = 0
    licence: str = ""
    checkpoint_reader: CheckpointReader | None = None

    @property
    def default_input_shape(self) -> tuple[int, ...]:
        """Per-sample input shape at the default clip length and input size."""
        if self.input_kind == "clip":
            return (self.in_channels, self.clip_length, *self.input_size)
        return (self.in_channels, *self.input_size)

    def layer_shapes(self, input_shape: tuple[int, ...] | None = None) -> dict[str, tuple[int, ...]]:
        """Per-sample shape of every cached layer for an input of ``input_shape`` (no batch)."""
        return self.shape_fn(tuple(input_shape or self.default_input_shape))


def frame_inputs(name: str, stream: str, flow_stack: int) -> dict[str, Any]:
    """The input fields of a 2D CNN's :class:`BackboneSpec`: an rgb frame, or a stack of
    ``flow_stack`` flow fields (2 channels each), at 224², ImageNet-normalised."""
    if flow_stack < 1:
        raise ConfigError(f"{name}: flow_stack must be >= 1, got {flow_stack}")
    rgb = stream == "rgb"
    return dict(
        input_kind="frames",
        in_channels=3 if rgb else 2 * flow_stack,
        clip_length=1 if rgb else flow_stack,
        input_size=(224, 224),
        mean=IMAGENET_MEAN if rgb else (FLOW_MEAN,) * 2 * flow_stack,
        std=IMAGENET_STD if rgb else (FLOW_STD,) * 2 * flow_stack,
    )


def video_vit_inputs(stream: str) -> dict[str, Any]:
    """The input fields of a video ViT's :class:`BackboneSpec` (VideoMAE, V-JEPA): 16
    frames at 224², ImageNet-normalised rgb, or 2-channel flow centred on 0.5."""
    rgb = stream == "rgb"
    return dict(
        input_kind="clip",
        in_channels=3 if rgb else 2,
        clip_length=16,
        input_size=(224, 224),
        mean=IMAGENET_MEAN if rgb else (0.5, 0.5),
        std=IMAGENET_STD if rgb else (0.226, 0.226),
    )


def finalize_spec(spec: BackboneSpec, module: nn.Module) -> BackboneSpec:
    """Return ``spec`` with its parameter count taken from the built module."""
    return replace(spec, num_params=count_parameters(module))


class Backbone(Protocol):
    """The forward contract every registered module follows."""

    spec: BackboneSpec
    num_features: int

    def forward_features(self, x: Tensor) -> dict[str, Tensor]: ...


Builder = Callable[..., nn.Module]
_REGISTRY: dict[str, Builder] = {}
_INPUTS: dict[str, tuple[str, ...]] = {}
_WEIGHTLESS: set[str] = set()
_VERSIONS: dict[str, int] = {}
_PLANS: dict[str, tuple[str, dict[str, object]]] = {}
_HISTOGRAMS: dict[str, dict[str, tuple[int, ...]]] = {}


def register_backbone(
    name: str,
    *,
    inputs: tuple[str, ...] = (),
    weightless: bool = False,
    version: int = 1,
    plan: tuple[str, dict[str, object]] | None = None,
    histograms: dict[str, tuple[int, ...]] | None = None,
) -> Callable[[Builder], Builder]:
    """Register a builder ``fn(*, stream, **options) -> module`` under ``name``.

    ``inputs`` names what each clip is built from when it is more than the stream
    (``("rgb", "flow")``: the frames and their cached flow, stacked as channels); the
    extract stage reads it before building anything. ``weightless`` backbones compute
    their features by formula: there is nothing to load and nothing random to warn about.
    ``version`` is bumped whenever the code changes what the same options produce
    (defaults included): it enters the extract fingerprint, so cached features and
    everything fitted on them go stale. ``plan`` = (sampler, options) is how the
    backbone's paper samples its clips: the plan ``vpipe run`` and ``vpipe plan`` make
    for it when no sampler is named, under the backbone's name (see :func:`backbone_plan`).
    ``histograms`` = {layer: block widths} declares that a layer's last axis is made of
    consecutive normalised histograms of those widths, at this version (see
    :func:`histogram_blocks`).
    """
    if version < 1:
        raise ValueError(f"backbone {name!r}: version must be a positive integer, got {version}")

    def decorator(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered by {_REGISTRY[name].__module__}")
        _REGISTRY[name] = fn
        if inputs:
            _INPUTS[name] = tuple(inputs)
        if weightless:
            _WEIGHTLESS.add(name)
        _VERSIONS[name] = version
        if plan is not None:
            _PLANS[name] = (plan[0], dict(plan[1]))
        if histograms:
            _HISTOGRAMS[name] = {layer: tuple(widths) for layer, widths in histograms.items()}
        return fn

    return decorator


def backbone_inputs(name: str, stream: str) -> tuple[str, ...]:
    """The cached inputs each clip of backbone ``name`` on ``stream`` is built from."""
    return _INPUTS.get(name, (stream,))


def backbone_defaults(name: str) -> dict[str, object]:
    """The keyword defaults of backbone ``name``'s builder (``stream`` aside): what an
    option left out means, for provenance."""
    import inspect

    builder = _REGISTRY.get(name)
    if builder is None:
        return {}
    parameters = inspect.signature(builder).parameters.values()
    return {p.name: p.default for p in parameters if p.name != "stream" and p.default is not inspect.Parameter.empty}


def backbone_plan(name: str) -> DefaultPlan:
    """The plan backbone ``name`` samples with when the user names no sampler: the one it
    declares, named after it, or the li3d sampler with its own defaults."""
    if name not in _PLANS:
        return DefaultPlan(DEFAULT_SAMPLER, DEFAULT_SAMPLER, {})
    sampler, options = _PLANS[name]
    return DefaultPlan(name, sampler, dict(options))


def backbone_version(name: str) -> int:
    """The registered output version of backbone ``name`` (1 unless its code was bumped)."""
    return _VERSIONS.get(name, 1)


def histogram_blocks(name: str, layer: str, version: int | None, width: int) -> tuple[int, ...]:
    """Widths of the histogram blocks of ``layer`` of features extracted by backbone ``name``
    at ``version`` whose entries are ``width`` wide, or ``()`` for features that are not
    declared histograms.

    Why a declaration: the bins of a normalised histogram are one quantity split between
    bins, and a bin that is near-constant (a still background's orientations) has no more
    meaning when scaled up to unit spread; heads that standardise their inputs give such a
    block one shared scale (see ``bilstm-softagg``), and learned features, whose dimensions
    are unrelated, keep one scale per dimension. Only features of the registered version
    are declared, so a set extracted with another layout keeps per-dimension scaling.
    """
    widths = _HISTOGRAMS.get(name, {}).get(layer, ())
    if not widths or version != backbone_version(name) or sum(widths) != width:
        return ()
    return widths


def is_weightless(name: str) -> bool:
    """Whether backbone ``name`` computes its features by formula, with no weights at all."""
    return name in _WEIGHTLESS


def list_backbones() -> list[str]:
    """Names of every registered backbone, sorted."""
    return sorted(_REGISTRY)


def backbone(
    name: str,
    *,
    stream: str = "rgb",
    weights: str | Path | None = None,
    strict: bool = True,
    **options: Any,
) -> nn.Module:
    """Build backbone ``name`` for ``stream`` and load ``weights`` from a local file.

    ``options`` go to the family builder (e.g. ``grid=(4, 4)``, ``flow_stack=10``).
    Without weights the module keeps its random initialisation, which makes every cached
    feature meaningless, so this warns loudly and records ``weights_info.sha256 = "random"``.
    """
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"unknown backbone {name!r}: {hint}known: {', '.join(list_backbones())}")
    if stream not in STREAMS:
        raise ConfigError(f"unknown stream {stream!r} for backbone {name!r}: use one of {', '.join(STREAMS)}")
    try:
        model = _REGISTRY[name](stream=stream, **options)
    except TypeError as exc:
        raise ConfigError(f"bad options for backbone {name!r}: {exc}") from exc
    if name in _WEIGHTLESS:
        if weights is not None:
            raise ConfigError(f"backbone {name!r} is computed by formula and has no weights to load: drop --weights")
        model.weights_info = WeightsInfo(sha256="none", path=None, missing=(), unexpected=(), mismatched=())
    elif weights is None:
        init_random(model, seed=stable_seed(name, stream, sorted(options.items())))
        message = (
            f"backbone {name}-{stream} has no weights: it is randomly initialised and its "
            "features are random; pass a local checkpoint to get meaningful features"
        )
        warnings.warn(message, stacklevel=2)
        model.weights_info = WeightsInfo(sha256="random", path=None, missing=(), unexpected=(), mismatched=())
    else:
        model.weights_info = load_weights(model, weights, strict=strict)
    return model.eval()


def init_random(model: nn.Module, *, seed: int) -> None:
    """Seeded He-normal init: the same random network in every process, at a usable scale.

    PyTorch's default conv init shrinks activations by about a third per layer, and
    BatchNorm in eval mode (running statistics 0 and 1) does not undo it: a default
    I3D ends with features near 1e-6, which float16 storage flattens to a handful of
    values. He-normal weights with identity BatchNorm keep each layer's output
    variance, so random features stay distinct. The seed makes every dask worker
    build the same network, so features from different workers are comparable.
    """
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            fan_in = module.weight[0].numel()
            with torch.no_grad():
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def count_parameters(module: nn.Module) -> int:
    """Number of learnable parameters (BN running statistics are buffers, not counted)."""
    return sum(p.numel() for p in module.parameters())


def inference_model(model: nn.Module) -> nn.Module:
    """The module extraction runs: the backbone's ``fused()`` inference copy where its
    family defines one (same outputs to float rounding, faster), else the backbone itself.

    Extraction and ``search --video`` both load models through here, so a query is
    computed exactly like the cache it is compared with.
    """
    fused = getattr(type(model), "fused", None)
    return fused(model) if callable(fused) else model


def check_input(module: nn.Module, x: Tensor) -> None:
    """Reject inputs of the wrong rank or channel count with a message naming the backbone."""
    spec: BackboneSpec = module.spec
    rank = 5 if spec.input_kind == "clip" else 4
    layout = "(N, C, T, H, W)" if rank == 5 else "(N, C, H, W)"
    if x.dim() != rank or x.shape[1] != spec.in_channels:
        raise ConfigError(
            f"{spec.name}-{spec.stream} expects {layout} input with C={spec.in_channels}, "
            f"got shape {tuple(x.shape)}"
        )


__all__ = [
    "Backbone",
    "BackboneSpec",
    "STREAMS",
    "backbone",
    "backbone_inputs",
    "backbone_plan",
    "check_input",
    "count_parameters",
    "finalize_spec",
    "inference_model",
    "is_weightless",
    "list_backbones",
    "register_backbone",
]
