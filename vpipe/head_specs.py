"""What each built-in head declares, readable without torch: options, training defaults,
inputs, run tag and the files a run reads.

A run's identity (its id, its fingerprint, whether a finished run already matches it)
depends only on these declarations, never on the network, so ``vpipe status``, ``vpipe
heads`` and ``TrainConfig`` read them here and do not pay a second and more for torch.
Each head in :mod:`vpipe.models.heads` is its declaration plus the module: it inherits
from its class here (``class BiLSTMSoftAgg(BiLSTMSoftAggSpec, Head)``), so the two cannot
drift; a test checks that every registered built-in head inherits its declaration
unchanged. A head registered at run time (one's own plugin) is found through the
registry instead (:func:`vpipe.catalog.head_spec`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

from vpipe.errors import ConfigError, StageError

Layout = Literal["steps", "clips"]


@dataclass(frozen=True)
class HeadInput:
    """One cached input of a head, delivered in the batch under ``role``.

    ``features`` names feature sets (``li3d-rgb``); with several, their ``layer`` rows are
    concatenated along the last axis (early fusion), which needs equal shapes otherwise.
    ``layout`` says how a video's clips are laid out:

    * ``"steps"``: clips joined along the first axis of their rows, so per-step vectors
      ``(τ, D)`` become one sequence ``(Σ τ, D)`` per video (1-D rows count one step each);
    * ``"clips"``: one entry per clip, ``(clips, *row_shape)``, for heads that keep the
      clip (window, segment) structure, e.g. to average scores over windows.
    """

    role: str
    features: tuple[str, ...]
    layer: str
    layout: Layout = "steps"

    def to_dict(self) -> dict[str, Any]:
        return {"role": self.role, "features": list(self.features), "layer": self.layer, "layout": self.layout}


@dataclass(frozen=True)
class HeadOption:
    """One option of a head: its default, help text and allowed values.

    Values from the command line arrive as strings and are converted to the type of the
    default (``kind`` where the default is None).

    ``added_later`` marks an option added after runs were trained whose default reproduces
    those runs exactly: at its default it stays out of a run's identity
    (:meth:`HeadSpec.identity_options`), so adding it does not make every finished run of
    the head stale and retrain it. Any other value enters the identity as usual.
    """

    name: str
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    kind: type | None = None
    minimum: float | None = None
    added_later: bool = False

    @property
    def type(self) -> type:
        return self.kind or type(self.default)

    def convert(self, value: Any) -> Any:
        """``value`` as this option's type; a :class:`ConfigError` naming the option if it is not."""
        if value is None or (isinstance(value, str) and value.lower() == "none" and self.default is None):
            if self.default is not None:
                raise ConfigError(f"head option {self.name!r} needs a value")
            return None
        kind = self.type
        try:
            if kind is bool and isinstance(value, str):
                lowered = value.lower()
                if lowered not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(value)
                converted: Any = lowered in ("true", "1", "yes")
            elif kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            else:
                converted = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"head option {self.name}={value!r} is not a valid {kind.__name__}") from None
        if self.choices is not None and converted not in self.choices:
            raise ConfigError(f"head option {self.name}={converted!r} is not one of {', '.join(map(str, self.choices))}")
        if self.minimum is not None and converted < self.minimum:
            raise ConfigError(f"head option {self.name} must be at least {self.minimum}, got {converted}")
        return converted


@dataclass(frozen=True)
class TrainingDefaults:
    """The optimiser settings a head trains with when the command line names none.

    The trainer's optimiser is AdamW; ``schedule`` is one of the trainer's schedules
    (``warmup-cosine`` or ``two-phase``). ``reason`` says where the values come from (the
    paper, or why they were chosen) and is shown by ``vpipe heads``.
    """

    lr: float = 1e-3
    max_epochs: int = 50
    schedule: str = "warmup-cosine"
    reason: str = "the trainer's AdamW settings"

    def to_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "max_epochs": self.max_epochs, "schedule": self.schedule, "reason": self.reason}


class HeadSpec:
    """The declaration half of :class:`vpipe.models.heads.registry.Head`.

    Subclasses set ``name``, ``summary`` (one line for ``vpipe heads``), ``options``,
    ``example_shapes`` (the paper's input size per role, for parameter counts),
    ``training`` (the optimiser settings a run uses unless the command line overrides
    them), ``streams`` (how many feature sets the head reads natively), ``version``
    (bumped whenever the head's code changes what the same options and data train into;
    it enters the run fingerprint) and ``batch_coupled`` (True when training couples
    the videos of a batch, as BatchNorm over the batch or a loss that is not a mean of
    per-video terms does: the trainer then never cuts its batches into micro-batches,
    :mod:`vpipe.train.memory`), and override the class methods below as needed.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    options: ClassVar[tuple[HeadOption, ...]] = ()
    example_shapes: ClassVar[dict[str, tuple[int, ...]]] = {}
    streams: ClassVar[int] = 1
    training: ClassVar[TrainingDefaults] = TrainingDefaults()
    version: ClassVar[int] = 1
    batch_coupled: ClassVar[bool] = False

    @classmethod
    def input_spec(cls, features: tuple[str, ...], options: dict[str, Any]) -> list[HeadInput]:
        """The cached inputs the head reads from ``features`` under ``options``.

        The default suits one-input heads with a ``layer`` option: role ``x``, per-step
        sequences of every given feature set, concatenated (early fusion).
        """
        return [HeadInput("x", tuple(features), options.get("layer", "pool"))]

    @classmethod
    def validate_options(cls, given: dict[str, Any]) -> dict[str, Any]:
        """Every option with its default filled in and ``given`` converted and checked."""
        known = {option.name: option for option in cls.options}
        unknown = sorted(set(given) - set(known))
        if unknown:
            hint = ", ".join(f"{o.name} (default {o.default!r})" for o in cls.options) or "none"
            raise ConfigError(f"head {cls.name!r} has no option {', '.join(unknown)}; its options: {hint}")
        values = {name: option.convert(given[name]) if name in given else option.default for name, option in known.items()}
        cls.check_options(values)
        return values

    @classmethod
    def identity_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` as a run's fingerprint sees them: without the options added later
        that sit at their default (see :class:`HeadOption`)."""
        neutral = {o.name for o in cls.options if o.added_later and options.get(o.name, o.default) == o.default}
        return {name: value for name, value in options.items() if name not in neutral}

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Rules between options (raise :class:`ConfigError`); none by default."""

    @classmethod
    def tag(cls, options: dict[str, Any]) -> str:
        """A short name for runs of this head: its name, plus a hash of non-default options."""
        from vpipe.pipeline.fingerprint import fingerprint

        changed = {o.name: options[o.name] for o in cls.options if options.get(o.name, o.default) != o.default}
        return cls.name + (f"-{fingerprint(changed)[:6]}" if changed else "")

    @classmethod
    def external_files(
        cls, options: dict[str, Any], features: tuple[str, ...], codebook_path: Callable[[str, int], Path | None]
    ) -> dict[str, Path]:
        """Files outside the feature cache a run reads (e.g. a codebook); their content is
        part of the run's fingerprint and they reach :meth:`prepare` as ``data.files``.
        ``codebook_path(features, K)`` is the codebook ``vpipe encode`` fitted on ``features``
        as they are now, or None when there is none or it was fitted on an earlier
        extraction of them (its recorded features index differs from the current one)."""
        return {}


#: ``bilstm-softagg``'s temporal layers (li3d-bilstm Table 3's rows).
TEMPORAL = ("none", "lstm", "bilstm")
#: ``vpipe.models.aggregation.AGGREGATIONS`` (a test keeps the two equal).
AGGREGATIONS = ("avg", "softbof", "softfv", "softvlad", "concat", "mean")
#: LSTM hidden size per direction when none is given (see :mod:`vpipe.models.heads.bilstm`).
HIDDEN = 256
#: The aggregation the papers' full model uses: the average of the three soft encodings.
AGGREGATION = "mean"
#: ``st-manet``'s roles (the paper's stages 2–5) and the r3d50 cache layers they read.
STMANET_ROLES = ("stage2", "stage3", "stage4", "stage5")
STMANET_LAYERS = ("layer1", "layer2", "layer3", "layer4")


class BiLSTMSoftAggSpec(HeadSpec):
    """``bilstm-softagg``: one per-step input; see :class:`vpipe.models.heads.bilstm.BiLSTMSoftAgg`."""

    name = "bilstm-softagg"
    summary = "LI3D-BiLSTM: none/LSTM/BiLSTM over clip steps, then soft BoF/FV/VLAD aggregation"
    options = (
        HeadOption("layer", "pool", "Cached layer with per-step vectors (τ, D)."),
        HeadOption("temporal", "bilstm", "Temporal re-encoding of the steps.", choices=TEMPORAL),
        HeadOption(
            "aggregation", AGGREGATION, "avg, a soft encoding, or mean/concat of all three (§4.1: mean).", choices=AGGREGATIONS
        ),
        HeadOption("clusters", 128, "Soft-aggregation centres K (the paper settles on 128).", minimum=1),
        HeadOption(
            "out_dim", None, "Projection size (None: K for mean, no projection otherwise).", kind=int, minimum=1
        ),
        HeadOption("hidden", HIDDEN, "LSTM hidden size per direction.", minimum=1),
        HeadOption("dropout", 0.5, "Dropout on the video embedding before the classifier.", minimum=0.0),
        HeadOption(
            "segments",
            1,
            "Consecutive temporal segments pooled apart and joined in order (1: whole video).",
            minimum=1,
            added_later=True,
        ),
        HeadOption(
            "spectrum",
            0,
            "Channels whose temporal spectrum joins the pooled code (0: none, as in the papers).",
            minimum=0,
            added_later=True,
        ),
        HeadOption("codebook", None, "Codebook .h5 for temporal=none (None: the workspace's, if fitted).", kind=str),
    )
    example_shapes = {"x": (1024,)}
    training = TrainingDefaults(
        lr=1e-3,
        max_epochs=50,
        reason="epochs: the 50 iterations of the aggregation paper's Fig. 4-5; lr: chosen, the papers give none",
    )
    #: 2: the fused soft FV / VLAD forwards round differently from the composed formulas,
    #: and over a run's epochs that moves where training ends (the main job's li3d-flow run:
    #: 0.190 before, 0.143 after, same data and seed), so runs trained before are not reused.
    version = 2

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        if not 0.0 <= options["dropout"] < 1.0:
            raise ConfigError(f"head option dropout must lie in [0, 1), got {options['dropout']}")
        if options["codebook"] is not None and options["temporal"] != "none":
            raise ConfigError(
                "codebook holds centres in the backbone's feature space and applies to temporal=none only; "
                "with an LSTM the centres are fitted on its outputs instead"
            )
        if options["codebook"] is not None and options["aggregation"] == "avg":
            raise ConfigError("codebook needs a soft aggregation; aggregation=avg has no centres")

    @classmethod
    def tag(cls, options: dict[str, Any]) -> str:
        """``<temporal>-<aggregation>[-k<K>][-seg<S>][-spec<C>]``, the rows of the papers'
        ablations (and the temporal segments and spectrum channels, when used)."""
        k = f"-k{options['clusters']}" if options["aggregation"] != "avg" else ""
        segments = f"-seg{options['segments']}" if options.get("segments", 1) > 1 else ""
        spectrum = f"-spec{options['spectrum']}" if options.get("spectrum", 0) > 0 else ""
        return f"{options['temporal']}-{options['aggregation']}{k}{segments}{spectrum}"

    @classmethod
    def external_files(
        cls, options: dict[str, Any], features: tuple[str, ...], codebook_path: Callable[[str, int], Path | None]
    ) -> dict[str, Path]:
        """The codebook of a ``temporal=none`` soft aggregation: the explicit one (which must
        exist) or the workspace's ``codebooks/<features>-k<K>.h5`` when it was fitted on the
        features as they are now (one fitted before they were re-extracted is ignored)."""
        if options["temporal"] != "none" or options["aggregation"] == "avg":
            return {}
        if options["codebook"] is not None:
            path = Path(options["codebook"])
            if not path.is_file():
                raise StageError(
                    f"no codebook at {path}: fit one with `vpipe encode --features {features[0]} "
                    f"--clusters {options['clusters']}`"
                )
            return {"codebook": path}
        default = codebook_path("+".join(features), options["clusters"])
        if default is None:
            return {}
        from vpipe.encode import load_codebook

        # A codebook fitted after PCA has its centres in the reduced space, not the one
        # the aggregation sees; the head then fits its own centres instead.
        return {"codebook": default} if load_codebook(default).pca is None else {}


class DeepFusionSpec(HeadSpec):
    """``deep-fusion``: rgb and flow maps; see :class:`vpipe.models.heads.deepfusion.DeepFusion`."""

    name = "deep-fusion"
    summary = "Two-stream deep fusion: 3x3x3 conv fusion of rgb+flow maps, Fc6, LN-LSTMs with region attention"
    options = (
        HeadOption("layer", "conv5_3", "Cached map layer of both streams (C, H, W) per frame."),
        HeadOption("fused", 512, "Channels D' after the fusion conv (the paper: 512, Fc6's input).", minimum=1),
        HeadOption("fc6", 4096, "Fc6 width (the paper: VGG-16's 4096).", minimum=1),
        HeadOption("fc6_grid", 7, "Cells per side of the pooled map Fc6 reads (VGG: 7).", minimum=1),
        HeadOption("hidden", 101, "Hidden size of every LN-LSTM (the paper: 101).", minimum=1),
        HeadOption("attention", None, "Region-attention size (None: the hidden size).", kind=int, minimum=1),
        HeadOption("fc6_dropout", 0.5, "Dropout after Fc6 (the paper: 0.5).", minimum=0.0),
        HeadOption("lstm_dropout", 0.25, "Dropout on every LSTM's outputs (the paper: 0.25).", minimum=0.0),
        HeadOption("fusion_init", "identity", "Fusion conv start: mean of the two streams, or random.",
                   choices=("identity", "random")),
        HeadOption("fc6_weights", None, "torchvision VGG-16 checkpoint to start Fc6 from (None: random).", kind=str),
    )
    example_shapes = {"rgb": (512, 14, 14), "flow": (512, 14, 14)}
    training = TrainingDefaults(
        lr=1e-5,
        max_epochs=186,
        schedule="two-phase",
        reason="§4: 1e-5 until converged (140 epochs), then 1e-6 from that result (46 epochs); above 1e-5 it diverges",
    )
    streams = 2

    @classmethod
    def input_spec(cls, features: tuple[str, ...], options: dict[str, Any]) -> list[HeadInput]:
        """Per-frame maps of the rgb set (first) and the flow set (second), frames in order."""
        if len(features) != 2:
            raise ConfigError(
                f"head {cls.name!r} reads two feature sets, rgb then flow (e.g. vgg16-rgb vgg16-flow), got {list(features)}"
            )
        return [HeadInput("rgb", (features[0],), options["layer"]), HeadInput("flow", (features[1],), options["layer"])]

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        for name in ("fc6_dropout", "lstm_dropout"):
            if not 0.0 <= options[name] < 1.0:
                raise ConfigError(f"head option {name} must lie in [0, 1), got {options[name]}")

    @classmethod
    def external_files(
        cls, options: dict[str, Any], features: tuple[str, ...], codebook_path: Callable[[str, int], Path | None]
    ) -> dict[str, Path]:
        """The VGG-16 checkpoint Fc6 starts from, when one is given (it must exist)."""
        if options["fc6_weights"] is None:
            return {}
        path = Path(options["fc6_weights"]).expanduser()
        if not path.is_file():
            raise StageError(f"head option fc6_weights: no file at {path}; pass a local torchvision VGG-16 checkpoint")
        return {"fc6_weights": path.resolve()}


class STMANetSpec(HeadSpec):
    """``st-manet``: four r3d50 stage maps per clip; see :class:`vpipe.models.heads.stmanet.STMANet`."""

    name = "st-manet"
    summary = "ST-MANet: temporal (TDA) and spatial (SDA) attention on r3d50 stage maps, multi-level fusion"
    options = (
        HeadOption("tda", True, "Temporal deep aggregation (eq. 1-3)."),
        HeadOption("sda", True, "Spatial deep aggregation (eq. 4-5)."),
        HeadOption("multilevel", True, "Multi-level fusion: concatenate stages 2-5 (eq. 8); false: stage 5 only."),
        HeadOption("lambda_s", 0.01, "λ1, weight of the spatial diversity L_s (eq. 9; §4.5).", minimum=0.0),
        HeadOption("lambda_t", 0.001, "λ2, weight of the temporal diversity L_t (eq. 9; §4.5).", minimum=0.0),
        HeadOption("reduction", 1, "Divide the query/key widths of TDA and SDA by this (1: the paper's).", minimum=1),
        HeadOption("dropout", 0.5, "Dropout on the fused embedding before the classifier.", minimum=0.0),
    )
    example_shapes: ClassVar[dict[str, tuple[int, ...]]] = {
        "stage2": (256, 16, 4, 4),
        "stage3": (512, 8, 4, 4),
        "stage4": (1024, 4, 4, 4),
        "stage5": (2048, 2, 4, 4),
    }
    training = TrainingDefaults(
        lr=1e-4,
        max_epochs=90,
        reason=(
            "epochs: the paper's 90 (§4.1); lr: its 0.01 is for SGD through the whole network, "
            "AdamW on the attention branches diverges at 1e-3 and trains at 1e-4"
        ),
    )

    @classmethod
    def input_spec(cls, features: tuple[str, ...], options: dict[str, Any]) -> list[HeadInput]:
        """The four stage maps of one feature set, one entry per clip (window)."""
        return [HeadInput(role, tuple(features), layer, "clips") for role, layer in zip(STMANET_ROLES, STMANET_LAYERS)]

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        if not 0.0 <= options["dropout"] < 1.0:
            raise ConfigError(f"head option dropout must lie in [0, 1), got {options['dropout']}")
        if options["lambda_s"] > 0 and not (options["sda"] and options["multilevel"]):
            raise ConfigError(
                "lambda_s weighs the diversity between SDA maps of different stages, which needs sda=true and "
                "multilevel=true: pass -O lambda_s=0"
            )
        if options["lambda_t"] > 0 and not options["tda"]:
            raise ConfigError("lambda_t weighs the diversity between TDA maps, which needs tda=true: pass -O lambda_t=0")

    @classmethod
    def tag(cls, options: dict[str, Any]) -> str:
        """``st-manet[-tda][-sda][-mf][-div]``: the rows of Table 4."""
        parts = [cls.name]
        parts += [name for name in ("tda", "sda") if options[name]]
        if options["multilevel"]:
            parts.append("mf")
        if options["lambda_s"] > 0 or options["lambda_t"] > 0:
            parts.append("div")
        return "-".join(parts)


class VCMSDDSpec(HeadSpec):
    """``vcm-sdd``: rgb and flow grids; see :class:`vpipe.models.heads.vcmsdd.VCMSDD`."""

    name = "vcm-sdd"
    summary = "VCM-SDD: geometric graph attention (STC) per stream, rgb<->flow cross-attention (MFF), segment average"
    streams = 2
    options = (
        HeadOption("layer", "grid", "Cached layer of per-frame grids (C, h, w)."),
        HeadOption("frames", 6, "Frames per segment k (the tsn plan's frames_per_segment; paper: 6).", minimum=1),
        HeadOption("stc", True, "Spatio-temporal consistency block (eq. 4-10)."),
        HeadOption("mff", True, "Multimodal cross-attention fusion block (eq. 11-12)."),
        HeadOption("heads", 8, "Attention heads of MFF.", minimum=1),
        HeadOption("dim", 512, "Width of MFF's query/key/value projections.", minimum=1),
        HeadOption("relation_dim", 32, "Columns of W_p (paper: 32).", minimum=1),
        HeadOption("dropout", 0.5, "Dropout on the video embedding before the classifier.", minimum=0.0),
    )
    example_shapes = {"rgb": (2048, 7, 7), "flow": (2048, 7, 7)}
    training = TrainingDefaults(
        lr=2e-3,
        max_epochs=100,
        reason="Table 1: AdamW, 100 epochs, lr 0.008 at batch 128, scaled linearly to the trainer's batch of 32",
    )

    @classmethod
    def input_spec(cls, features: tuple[str, ...], options: dict[str, Any]) -> list[HeadInput]:
        if len(features) != 2:
            raise ConfigError(
                f"head {cls.name!r} reads an rgb and a flow feature set, got {len(features)} "
                f"({', '.join(features)}): pass --features resnet101-rgb --features resnet101-flow"
            )
        return [HeadInput("rgb", (features[0],), options["layer"]), HeadInput("flow", (features[1],), options["layer"])]

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        if not 0.0 <= options["dropout"] < 1.0:
            raise ConfigError(f"head option dropout must lie in [0, 1), got {options['dropout']}")
        if options["mff"] and options["dim"] % options["heads"]:
            raise ConfigError(f"head option dim={options['dim']} must be a multiple of heads={options['heads']}")

    @classmethod
    def tag(cls, options: dict[str, Any]) -> str:
        """``vcm-sdd-[no]stc-[no]mff``, the rows of Table 2, plus a hash of other changes."""
        blocks = f"{'' if options['stc'] else 'no'}stc-{'' if options['mff'] else 'no'}mff"
        rest = {k: v for k, v in options.items() if k not in ("stc", "mff")}
        base = super().tag({**rest, "stc": True, "mff": True})
        return f"{cls.name}-{blocks}{base[len(cls.name):]}"


def stream_prefix(index: int) -> str:
    """The role prefix of stream ``index``'s inputs in a late-fused batch."""
    return f"{index}/"


def prefixed_files(files: list[dict[str, Path]]) -> dict[str, Path]:
    """Stream heads' :meth:`HeadSpec.external_files`, keyed as late fusion's ``prepare`` reads them."""
    return {stream_prefix(i) + key: path for i, part in enumerate(files) for key, path in part.items()}


def describe_spec(spec: type[HeadSpec], *, parameters: int | None, hooks: list[str]) -> dict[str, Any]:
    """A head as ``vpipe heads`` lists it (the fields of ``HeadInfo``), from its
    declaration; the parameter count and the hooks it overrides come from its module."""
    options = spec.validate_options({})
    streams = tuple(f"<features{i + 1}>" for i in range(spec.streams))
    return {
        "name": spec.name,
        "summary": spec.summary,
        "inputs": [entry.to_dict() for entry in spec.input_spec(streams, options)],
        "options": [
            {"name": o.name, "default": o.default, "choices": list(o.choices) if o.choices else None, "help": o.help}
            for o in spec.options
        ],
        "hooks": hooks,
        "parameters": parameters,
        "example_shapes": {role: list(shape) for role, shape in spec.example_shapes.items()},
        "training": spec.training.to_dict(),
        "version": spec.version,
    }


#: Every built-in head's declaration by name.
HEAD_SPECS: dict[str, type[HeadSpec]] = {
    spec.name: spec for spec in (BiLSTMSoftAggSpec, DeepFusionSpec, STMANetSpec, VCMSDDSpec)
}
