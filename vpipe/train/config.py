"""What a training run is: one dataclass, validated once, stored with the run.

``TrainConfig`` holds every choice that changes the trained model: the inputs (feature
sets and how several are fused), the head and its options, optimisation and seed. The
head's options are checked by the head itself (:meth:`Head.validate_options`) and stored
complete, defaults filled in, so that a run's fingerprint does not depend on which
options were spelled out. It is written to the run's ``config.json`` and read back by
``evaluate`` and ``report``, so a run can be rebuilt from its directory alone; anything
that does not change the result (progress, the run's name) stays out of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from vpipe.encode.budget import parse_bytes
from vpipe.errors import ConfigError

if TYPE_CHECKING:
    from vpipe.head_specs import HeadSpec
    from vpipe.models.heads.registry import Head

#: How a one-stream head reads several feature sets: ``late`` trains one head per set and
#: averages their class probabilities (the two-stream protocol); ``early`` concatenates
#: the sets' per-step inputs and trains one head on them.
FUSIONS = ("late", "early")
#: ``warmup-cosine``: linear warm-up then cosine decay from ``lr``, stepped per batch.
#: ``two-phase``: ``lr`` for the first half of the epochs, ``lr / 10`` for the rest,
#: continuing from the best checkpoint of the first phase (two-stream deep fusion §4).
SCHEDULES = ("warmup-cosine", "two-phase")
#: Memory a training process may take unless told otherwise (a worker of 8 GB with room
#: for the system). Not a field: it decides how batches are cut into micro-batches
#: (:mod:`vpipe.train.memory`), which changes memory and time, not what is trained.
DEFAULT_MEMORY_BUDGET_TEXT = "6G"
DEFAULT_MEMORY_BUDGET = parse_bytes(DEFAULT_MEMORY_BUDGET_TEXT)


@dataclass(frozen=True)
class TrainConfig:
    """Options of one training run; defaults suit a dataset of a few thousand videos.

    ``features`` lists feature sets under ``features/``; a head that reads one stream
    and is given several fuses them as ``fusion`` says. ``head_options`` go to the head
    (see ``vpipe heads``). ``max_epochs`` bounds training; early stopping ends it after
    ``patience`` epochs without a better validation accuracy. ``amp`` uses bf16 (fp16
    where bf16 is missing) autocast on CUDA and is ignored on CPU.

    ``lr``, ``max_epochs`` and ``schedule`` left at None take the head's declared
    :class:`~vpipe.models.heads.registry.TrainingDefaults` (``vpipe heads`` lists them);
    the config stores the resolved values, so naming a head's default equals leaving it out.
    """

    features: tuple[str, ...] = ("li3d-rgb",)
    head: str = "bilstm-softagg"
    head_options: dict[str, Any] = field(default_factory=dict)
    fusion: str = "late"
    val_fraction: float = 0.15
    batch_size: int = 32
    max_epochs: int | None = None
    patience: int = 10
    lr: float | None = None
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    schedule: str | None = None
    grad_clip: float = 5.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True

    def __post_init__(self) -> None:
        # The head's declaration, not its module: status and the command line build
        # configs without torch (see :mod:`vpipe.head_specs`).
        from vpipe.catalog import DEVICES, head_spec

        features = (self.features,) if isinstance(self.features, str) else tuple(self.features)
        object.__setattr__(self, "features", features)
        cls = head_spec(self.head)
        object.__setattr__(self, "head_options", cls.validate_options(dict(self.head_options)))
        for name in ("lr", "max_epochs", "schedule"):
            if getattr(self, name) is None:
                object.__setattr__(self, name, getattr(cls.training, name))
        _choice("fusion", self.fusion, FUSIONS)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("device", self.device, DEVICES)
        if not features or any(not f or "/" in f for f in features):
            raise ConfigError(f"--features must name directories under features/, got {list(features)}")
        if len(set(features)) != len(features):
            raise ConfigError(f"--features lists a feature set twice: {list(features)}")
        if cls.streams > 1 and len(features) != cls.streams:
            raise ConfigError(
                f"head {self.head!r} reads {cls.streams} streams (rgb, then flow): pass --features {cls.streams} times, "
                f"got {list(features)}"
            )
        if cls.streams == 1 and len(features) > 1 and self.fusion == "early":
            kept_apart = [s.role for s in cls.input_spec(features, self.head_options) if s.layout == "clips"]
            if kept_apart:
                raise ConfigError(
                    f"head {self.head!r} reads whole clips ({', '.join(kept_apart)}), which early fusion cannot "
                    "concatenate: use --fusion late"
                )
        for name in ("batch_size", "max_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.patience < 1:
            raise ConfigError(f"--patience must be at least 1, got {self.patience}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must lie in [0, 1), got {self.val_fraction}")
        if self.lr < 0 or self.weight_decay < 0 or self.warmup_epochs < 0 or self.grad_clip < 0:
            raise ConfigError("--lr, --weight-decay, --warmup-epochs and --grad-clip must not be negative")
        if not 0 <= self.seed < 2**31:
            raise ConfigError(f"--seed must lie in [0, 2^31), got {self.seed}")

    @property
    def head_cls(self) -> type[Head]:
        """The registered head (imports torch); :attr:`head_spec` when its declaration is enough."""
        from vpipe.models.heads import head_class

        return head_class(self.head)

    @property
    def head_spec(self) -> type[HeadSpec]:
        """The head's declaration (options, inputs, tag, files), without torch."""
        from vpipe.catalog import head_spec

        return head_spec(self.head)

    @property
    def late_fusion(self) -> bool:
        """Whether the run trains one head per feature set and averages their probabilities."""
        return self.head_spec.streams == 1 and len(self.features) > 1 and self.fusion == "late"

    def inputs_name(self) -> str:
        """The inputs as a run id names them: ``li3d-rgb``, ``li3d-rgb+li3d-flow-late``."""
        joined = "+".join(self.features)
        return f"{joined}-{self.fusion}" if self.head_spec.streams == 1 and len(self.features) > 1 else joined

    def default_run_id(self) -> str:
        """``<inputs>-<head tag>-s<seed>``, readable in a listing (e.g. ``li3d-rgb-bilstm-mean-k128-s0``)."""
        spec = self.head_spec
        schedule = "" if self.schedule == spec.training.schedule else f"-{self.schedule}"
        return f"{self.inputs_name()}-{spec.tag(self.head_options)}{schedule}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["features"] = list(self.features)
        return data

    def identity(self) -> dict[str, Any]:
        """:meth:`to_dict` as a run's fingerprint covers it: head options added later that sit
        at their default are left out, so runs trained before they existed stay current."""
        return {**self.to_dict(), "head_options": self.head_spec.identity_options(self.head_options)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys are an error, not ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown training options {unknown}; known: {sorted(known)}")
        return cls(**data)


def _choice(option: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"--{option} {value!r} is not one of {', '.join(allowed)}")
