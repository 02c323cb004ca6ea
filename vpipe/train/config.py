"""What a training run is: one dataclass, validated once, stored with the run.

``TrainConfig`` holds every choice that changes the trained model (data, head,
optimisation, seed). It is written to the run's ``config.json`` and read back by
``evaluate`` and ``report``, so a run can be rebuilt from its directory alone; anything
that does not change the result (progress bars, the run's name) stays out of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from vpipe.errors import ConfigError
from vpipe.models.aggregation import AGGREGATIONS
from vpipe.models.heads.bilstm import TEMPORAL

HEADS = ("bilstm-softagg",)
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class TrainConfig:
    """Options of one training run; defaults suit a dataset of a few thousand videos.

    ``codebook`` is a codebook file for ``temporal="none"``; None means the workspace's
    ``codebooks/<features>-k<clusters>.h5`` when it exists (see :mod:`vpipe.train.init`).
    ``max_epochs`` bounds training; early stopping ends it after ``patience`` epochs
    without a better validation accuracy. ``warmup_epochs`` of linear warm-up precede the
    cosine decay of the learning rate. ``amp`` uses bf16 (fp16 where bf16 is missing)
    autocast on CUDA and is ignored on CPU.
    """

    features: str = "li3d-rgb"
    layer: str = "pool"
    head: str = "bilstm-softagg"
    temporal: str = "bilstm"
    aggregation: str = "concat"
    clusters: int = 128
    out_dim: int | None = None
    hidden: int = 256
    dropout: float = 0.5
    codebook: str | None = None
    val_fraction: float = 0.15
    batch_size: int = 32
    max_epochs: int = 50
    patience: int = 10
    lr: float = 1e-3
    weight_decay: float = 1e-2
    warmup_epochs: float = 1.0
    grad_clip: float = 5.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True

    def __post_init__(self) -> None:
        _choice("head", self.head, HEADS)
        _choice("temporal", self.temporal, TEMPORAL)
        _choice("aggregation", self.aggregation, AGGREGATIONS)
        _choice("device", self.device, DEVICES)
        if not self.features or "/" in self.features:
            raise ConfigError(f"--features must name a directory under features/, got {self.features!r}")
        for name in ("clusters", "hidden", "batch_size", "max_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.out_dim is not None and self.out_dim < 1:
            raise ConfigError(f"--out-dim must be at least 1, got {self.out_dim}")
        if self.patience < 1:
            raise ConfigError(f"--patience must be at least 1, got {self.patience}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"--dropout must lie in [0, 1), got {self.dropout}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must lie in [0, 1), got {self.val_fraction}")
        if self.lr < 0 or self.weight_decay < 0 or self.warmup_epochs < 0 or self.grad_clip < 0:
            raise ConfigError("--lr, --weight-decay, --warmup-epochs and --grad-clip must not be negative")
        if not 0 <= self.seed < 2**31:
            raise ConfigError(f"--seed must lie in [0, 2^31), got {self.seed}")
        if self.codebook is not None and self.temporal != "none":
            raise ConfigError(
                "--codebook holds centres in the backbone's feature space and applies to --temporal none only; "
                "with an LSTM the centres are fitted on its outputs instead"
            )
        if self.codebook is not None and self.aggregation == "avg":
            raise ConfigError("--codebook needs a soft aggregation; --aggregation avg has no centres")

    @property
    def uses_clusters(self) -> bool:
        """Whether ``clusters`` means anything: the average pool has no centres."""
        return self.aggregation != "avg"

    def default_run_id(self) -> str:
        """``<features>-<temporal>-<aggregation>[-k<K>]-s<seed>``, readable in a listing."""
        k = f"-k{self.clusters}" if self.uses_clusters else ""
        return f"{self.features}-{self.temporal}-{self.aggregation}{k}-s{self.seed}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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


#: Settings for the built-in synthetic dataset on a 2-core laptop: a small BiLSTM and
#: codebook, so that the whole run takes well under a minute for ~140 videos.
QUICK: dict[str, Any] = dict(hidden=64, clusters=16, batch_size=16, max_epochs=40, patience=10, lr=3e-3)
