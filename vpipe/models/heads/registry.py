"""Heads as plugins over the feature cache: the protocol, the batch they read, the registry.

A head is one class: it declares the cached inputs it reads (:class:`HeadInput`: a role
name, the feature sets, the layer and how clips are laid out), its own options
(:class:`HeadOption`, validated by the head, never by the trainer), and optional hooks
(:meth:`Head.prepare` before training, :meth:`Head.external_files` for files that
belong in the run's fingerprint, :meth:`Head.training_loss` for extra loss terms). The
trainer knows nothing else, so adding a head is one file with ``@register_head`` and its
tests; ``vpipe heads``, ``vpipe train --head`` and the report read everything from here.

The forward contract follows timm: :meth:`Head.forward_features` gives the video
embedding (``num_features`` values; t-SNE and retrieval use it), :meth:`Head.forward_head`
the logits, :meth:`Head.forward` both in sequence.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpipe.errors import ConfigError

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
    """

    name: str
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    kind: type | None = None
    minimum: float | None = None

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


@dataclass
class HeadBatch:
    """A padded batch of videos (or views): every declared input under its role.

    ``inputs[role]`` is ``(B, L, *shape)`` float32, zero after each video's ``lengths[role]``
    entries (steps or clips, by the input's layout); ``labels`` is ``(B,)`` (-1 unknown).
    """

    inputs: dict[str, Tensor]
    lengths: dict[str, Tensor]
    labels: Tensor

    def mask(self, role: str) -> Tensor:
        """``(B, L)`` True where ``inputs[role]`` holds data, False on padding."""
        x = self.inputs[role]
        return torch.arange(x.shape[1], device=x.device) < self.lengths[role].to(x.device).unsqueeze(1)

    def to(self, device: torch.device) -> HeadBatch:
        """Inputs and labels on ``device``; lengths stay on the CPU (packing wants them there)."""
        return HeadBatch(
            {role: x.to(device, non_blocking=True) for role, x in self.inputs.items()},
            self.lengths,
            self.labels.to(device, non_blocking=True),
        )

    def select(self, prefix: str) -> HeadBatch:
        """The roles that start with ``prefix``, with the prefix removed (for composite heads)."""
        return HeadBatch(
            {role[len(prefix) :]: x for role, x in self.inputs.items() if role.startswith(prefix)},
            {role[len(prefix) :]: n for role, n in self.lengths.items() if role.startswith(prefix)},
            self.labels,
        )

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class PrepareData:
    """What :meth:`Head.prepare` may read before training: train (fit) videos only.

    ``sample(role, limit)`` gives up to ``limit`` view-0 entries of ``role`` from the fit
    videos in a seeded random order, stacked ``(n, *shape)`` float32; ``batches()`` yields
    the fit videos' view-0 :class:`HeadBatch` es in loader order; ``files`` holds the
    resolved :meth:`Head.external_files`; ``histogram_columns(role)`` gives, per feature
    set of ``role``, the (start, stop) range of its columns that its backbone declares
    normalised histograms (none for learned features), for heads that scale their inputs.
    """

    sample: Callable[[str, int], np.ndarray]
    batches: Callable[[], Iterator[HeadBatch]]
    files: dict[str, Path]
    fit_videos: int
    seed: int
    histogram_columns: Callable[[str], tuple[tuple[int, int], ...]] = lambda role: ()


class Head(nn.Module):
    """Base class of registered heads.

    Subclasses set ``name`` (via :func:`register_head`), ``summary`` (one line for
    ``vpipe heads``), ``options``, ``example_shapes`` (the paper's input size per role,
    for parameter counts), ``training`` (the optimiser settings a run uses unless the
    command line overrides them) and implement ``__init__(shapes, num_classes, **options)``,
    :meth:`forward_features` and :meth:`forward_head`; they set ``num_features``.
    ``streams`` is how many feature sets the head reads natively: a head of one stream
    given several feature sets is fused by the trainer (late: one head per stream, or
    early: concatenated inputs); a two-stream head (rgb + flow) sets 2. ``version`` is
    bumped whenever the head's code changes what the same options and data train into
    (a new default, a fixed equation): it enters the run fingerprint, so finished runs
    of the old code are no longer reused as if they were current.
    """

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    options: ClassVar[tuple[HeadOption, ...]] = ()
    example_shapes: ClassVar[dict[str, tuple[int, ...]]] = {}
    streams: ClassVar[int] = 1
    training: ClassVar[TrainingDefaults] = TrainingDefaults()
    version: ClassVar[int] = 1
    num_features: int

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

    def prepare(self, data: PrepareData) -> dict[str, Any] | None:
        """Set data-dependent state (input statistics, codebook) before training; return a
        JSON-able record of what was done for the run's config, or None."""
        return None

    def forward_features(self, batch: HeadBatch) -> Tensor:
        raise NotImplementedError

    def forward_head(self, embedding: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, batch: HeadBatch, return_embedding: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits ``(B, num_classes)``, and the embedding too when ``return_embedding``."""
        embedding = self.forward_features(batch)
        logits = self.forward_head(embedding)
        return (logits, embedding) if return_embedding else logits

    def training_loss(self, batch: HeadBatch) -> tuple[Tensor, Tensor]:
        """(loss, logits) of one training batch; cross-entropy unless a head adds terms."""
        logits = self(batch)
        return F.cross_entropy(logits.float(), batch.labels), logits

    @classmethod
    def hooks(cls) -> list[str]:
        """The optional hooks this head overrides, for ``vpipe heads``."""
        names = ("prepare", "external_files", "training_loss")
        return [name for name in names if _implementation(cls, name) is not _implementation(Head, name)]


def _implementation(owner: type, name: str) -> Any:
    """The function behind ``owner.name`` (bound classmethods are new objects on each access)."""
    attr = inspect.getattr_static(owner, name)
    return attr.__func__ if isinstance(attr, classmethod) else attr


_REGISTRY: dict[str, type[Head]] = {}


def register_head(cls: type[Head]) -> type[Head]:
    """Class decorator: make ``cls`` available as ``cls.name``; a taken name is an error."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if not isinstance(cls.version, int) or cls.version < 1:
        raise ValueError(f"head {cls.name!r}: version must be a positive integer, got {cls.version!r}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"head {cls.name!r} is already registered by {_REGISTRY[cls.name].__module__}")
    _REGISTRY[cls.name] = cls
    return cls


def unregister_head(name: str) -> None:
    """Remove a head (tests register throw-away heads)."""
    _REGISTRY.pop(name, None)


def list_heads() -> list[str]:
    return sorted(_REGISTRY)


def head_class(name: str) -> type[Head]:
    """The registered class ``name``; unknown names raise and list close matches."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise ConfigError(f"unknown head {name!r}: {hint}known: {', '.join(list_heads())}")
    return _REGISTRY[name]


def create_head(name: str, shapes: dict[str, tuple[int, ...]], num_classes: int, **options: Any) -> Head:
    """Build head ``name`` for inputs of per-entry ``shapes`` (role -> shape without the
    sequence axis) and ``num_classes``; ``options`` are validated by the head."""
    cls = head_class(name)
    return cls(shapes, num_classes, **cls.validate_options(options))


@dataclass(frozen=True)
class HeadInfo:
    """A registered head as ``vpipe heads`` shows it."""

    name: str
    summary: str
    inputs: list[dict[str, Any]]
    options: list[dict[str, Any]]
    hooks: list[str]
    parameters: int | None
    example_shapes: dict[str, list[int]] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    version: int = 1


def describe_head(name: str, num_classes: int = 101) -> HeadInfo:
    """Inputs, options, hooks, training defaults and the parameter count at ``example_shapes``."""
    cls = head_class(name)
    options = cls.validate_options({})
    streams = tuple(f"<features{i + 1}>" for i in range(cls.streams))
    inputs = [spec.to_dict() for spec in cls.input_spec(streams, options)]
    parameters = None
    if cls.example_shapes:
        with torch.device("meta"):  # sizes only: no memory, no initialisation time
            model = cls(dict(cls.example_shapes), num_classes, **options)
        parameters = int(sum(p.numel() for p in model.parameters()))
    return HeadInfo(
        name=name,
        summary=cls.summary,
        inputs=inputs,
        options=[
            {"name": o.name, "default": o.default, "choices": list(o.choices) if o.choices else None, "help": o.help}
            for o in cls.options
        ],
        hooks=cls.hooks(),
        parameters=parameters,
        example_shapes={role: list(shape) for role, shape in cls.example_shapes.items()},
        training=cls.training.to_dict(),
        version=cls.version,
    )
