"""A finished training run, read once from its directory and handed on.

``runs/<run_id>/config.json`` becomes a :class:`RunConfig` (its keys checked like every
record's) and ``metrics.json`` a mapping of the test metrics; :class:`RunRecord` holds
both with the run's directory, and reads ``history.csv`` once, when first asked. The
report, evaluation and the dataset steps take a record rather than a run id, so a
report reads each run's files once instead of once per figure and per rebuilt model.

Which epoch a run keeps is decided here too (:class:`BestEpoch`): the trainer applies
the rule as it trains, and a finished run's history replays it (:attr:`RunRecord.best_epoch`),
so what the checkpoint holds is read from the run's own files without the trainer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from vpipe.artifacts.records import Record

if TYPE_CHECKING:
    import pandas as pd

CONFIG_FILE = "config.json"
HISTORY_FILE = "history.csv"
CHECKPOINT_FILE = "checkpoint.pt"
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class RunConfig(Record):
    """``config.json``: everything needed to rebuild a run's model and its data.

    ``train`` is the training options' stored form (``TrainConfig.to_dict``), ``model``
    the head, fusion, per-role entry shapes and class count, ``features`` each feature
    set's directory, index digest and provenance, ``data`` the splits with their labels.
    Runs from before the per-role inputs were recorded have no ``inputs``, ``files`` or
    ``prepared`` and name their ``codebook`` instead.
    """

    _omit_none: ClassVar[frozenset[str]] = frozenset({"inputs", "files", "codebook"})

    run_id: str
    dataset: str
    created: str
    fingerprint: str
    train: Mapping[str, Any]
    model: Mapping[str, Any]
    features: Mapping[str, Any]
    data: Mapping[str, Any]
    environment: Mapping[str, Any]
    inputs: tuple[Mapping[str, Any], ...] | None = None
    files: Mapping[str, Any] | None = None
    prepared: Any = None
    codebook: Any = None

    @classmethod
    def _load_field(cls, key: str, value: Any, source: str) -> Any:
        return tuple(value) if key == "inputs" and value is not None else value

    @property
    def class_names(self) -> list[str]:
        return list(self.data["class_names"])

    @property
    def labels(self) -> dict[str, int]:
        return {video: int(label) for video, label in self.data["labels"].items()}

    @property
    def test_videos(self) -> list[str]:
        return list(self.data["test"])


class BestEpoch:
    """The best epoch so far by (validation accuracy, then lower validation loss)."""

    def __init__(self) -> None:
        self.epoch, self.acc, self.loss = 0, -1.0, math.inf

    def update(self, epoch: int, acc: float, loss: float) -> bool:
        if acc > self.acc or (acc == self.acc and loss < self.loss):
            self.epoch, self.acc, self.loss = epoch, acc, loss
            return True
        return False


def best_epoch(history: pd.DataFrame) -> int:
    """The epoch a run kept, replayed from its history with the rule training used."""
    best = BestEpoch()
    for row in history.itertuples():
        best.update(int(row.epoch), float(row.val_acc), float(row.val_loss))
    return best.epoch


@dataclass(frozen=True)
class RunRecord:
    """A completed run: its id, directory, config and test metrics."""

    run_id: str
    directory: Path
    config: RunConfig
    metrics: Mapping[str, Any]

    @classmethod
    def from_directory(cls, directory: Path) -> RunRecord:
        directory = Path(directory)
        config = RunConfig.from_file(directory / CONFIG_FILE)
        metrics = json.loads((directory / METRICS_FILE).read_text())
        return cls(directory.name, directory, config, metrics)

    @cached_property
    def history(self) -> pd.DataFrame:
        """``history.csv``, read once per record."""
        import pandas as pd

        return pd.read_csv(self.directory / HISTORY_FILE)

    @property
    def best_epoch(self) -> int:
        """The epoch whose weights the checkpoint holds."""
        return best_epoch(self.history)

    @property
    def checkpoint(self) -> Path:
        return self.directory / CHECKPOINT_FILE


def finished_runs(runs_dir: Path) -> list[RunRecord]:
    """Every run under ``runs_dir`` that finished (has ``metrics.json``), each read once, oldest first."""
    if not runs_dir.is_dir():
        return []
    done = [RunRecord.from_directory(p) for p in runs_dir.iterdir() if (p / METRICS_FILE).is_file() and (p / CONFIG_FILE).is_file()]
    return sorted(done, key=lambda run: (run.config.created, run.run_id))
