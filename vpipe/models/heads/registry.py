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
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpipe.errors import ConfigError
# The declarations are torch-free and live apart; re-exported, as heads and the trainer use them from here.
from vpipe.head_specs import HeadInput, HeadOption, HeadSpec, TrainingDefaults, describe_spec  # noqa: F401


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


class Head(HeadSpec, nn.Module):
    """Base class of registered heads: a declaration (:class:`vpipe.head_specs.HeadSpec`:
    name, options, training defaults, inputs, tag, files) and the module.

    Subclasses implement ``__init__(shapes, num_classes, **options)``,
    :meth:`forward_features` and :meth:`forward_head`, and set ``num_features``. A
    built-in head declares itself in :mod:`vpipe.head_specs` and inherits that
    declaration, so that status and listings read it without torch; a head of one's
    own may declare everything on its own class. ``streams`` is how many feature sets
    the head reads natively: a head of one stream given several feature sets is fused
    by the trainer (late: one head per stream, or early: concatenated inputs); a
    two-stream head (rgb + flow) sets 2. ``version`` enters the run fingerprint, so
    finished runs of older code are no longer reused as if they were current.
    """

    num_features: int

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

    def two_stream_grid(self, shapes: dict[str, tuple[int, ...]], fix: str) -> tuple[int, int, int]:
        """The (C, H, W) per-frame map both streams give a two-stream head, which reads them
        side by side; refused, naming ``fix``, unless rgb and flow are grids of one shape."""
        rgb, flow = tuple(shapes["rgb"]), tuple(shapes["flow"])
        if len(rgb) != 3 or rgb != flow:
            raise ConfigError(
                f"head {self.name!r} reads per-frame maps (C, H, W) of equal shape from both streams, got rgb "
                f"{list(rgb)} and flow {list(flow)}: {fix}"
            )
        return rgb

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
    parameters = None
    if cls.example_shapes:
        with torch.device("meta"):  # sizes only: no memory, no initialisation time
            model = cls(dict(cls.example_shapes), num_classes, **cls.validate_options({}))
        parameters = int(sum(p.numel() for p in model.parameters()))
    return HeadInfo(**describe_spec(cls, parameters=parameters, hooks=cls.hooks()))
