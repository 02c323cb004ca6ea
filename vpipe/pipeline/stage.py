"""Stages: functions from artifacts to artifacts, run item by item.

A stage lists its work items (each with a fingerprint of its configuration and
inputs), names a picklable per-item function, and writes its artifact from the
rows its items produced. The runner (:mod:`vpipe.pipeline.runner`) decides which
items are missing or stale, runs only those, and records failures; stages hold no
resume logic of their own.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa

from vpipe.artifacts import atomic_write_text
from vpipe.pipeline.executor import ItemFn, WorkItem
from vpipe.pipeline.fingerprint import fingerprint
from vpipe.pipeline.journal import Record
from vpipe.pipeline.workspace import DatasetWorkspace


@dataclass
class StageReport:
    """Counts of one stage: what exists, and what this invocation did."""

    stage: str
    total: int = 0
    done: int = 0
    failed: int = 0
    computed: int = 0
    up_to_date: int = 0
    seconds: float = 0.0
    artifact: str = ""
    ready: bool = True
    reason: str = ""
    #: Items recorded as done whose stored output is missing or damaged (see ``damaged_items``).
    damaged: int = 0
    #: Items recorded under another fingerprint: an input or option changed since (status only).
    stale: int = 0
    #: Items with no record at all: never run (status only).
    new: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if not self.ready:
            return f"{self.stage}: not ready ({self.reason})"
        if self.computed == 0:
            work = "nothing to do, all up to date"
        else:
            work = f"computed {self.computed} in {self.seconds:.1f}s, {self.up_to_date} already up to date"
        damaged = f", {self.damaged} damaged (run `vpipe verify`)" if self.damaged else ""
        return f"{self.stage}: {self.done}/{self.total} done, {self.failed} failed{damaged} ({work})"


class Stage(ABC):
    """One step of the DAG for one dataset."""

    #: Name used in failure records, status output and task keys.
    name: ClassVar[str]
    #: Dask resources a task asks for (``{"GPU": 1}`` for GPU stages).
    resources: ClassVar[dict[str, float] | None] = None
    #: Cheap stages run in the driver: shipping their items to workers costs more than the work.
    in_process: ClassVar[bool] = False
    #: Items per task. With ``batched``, the item function receives the chunk's payloads at
    #: once (e.g. to batch clips of several videos through a model); records stay per item.
    chunk_size: int = 1
    batched: ClassVar[bool] = False

    def __init__(self, workspace: DatasetWorkspace):
        self.workspace = workspace

    @property
    def label(self) -> str:
        """How reports, status and failure records name this stage instance."""
        return self.name

    @property
    def journal_name(self) -> str:
        """Distinguishes several artifacts of one stage (two plans, two feature sets)."""
        return self.name

    @property
    def journal_dir(self) -> Path:
        return self.workspace.state_dir / self.journal_name

    @property
    @abstractmethod
    def artifact(self) -> Path:
        """The file or directory this stage produces."""

    @abstractmethod
    def items(self) -> list[WorkItem]:
        """All items of the stage; raises StageError when its inputs do not exist yet."""

    def item_fingerprints(self) -> tuple[pa.Array, pa.Array]:
        """Every item's key and fingerprint, as two string columns: all that ``vpipe status``
        compares with the journal.

        This default lists :meth:`items`. Stages with one item per video build the two
        columns without the items (see :mod:`vpipe.pipeline.fingerprint_columns`), and
        their :meth:`items` take the fingerprints from here, so status and a run agree.
        """
        items = self.items()
        return (
            pa.array([item.key for item in items], pa.string()),
            pa.array([item.fingerprint for item in items], pa.string()),
        )

    @abstractmethod
    def item_fn(self) -> ItemFn:
        """A picklable function ``payload -> rows`` (module-level or a partial of one).

        For ``batched`` stages: ``list[payload] -> list[rows | Exception]``, one entry per payload.
        """

    @abstractmethod
    def write_artifact(self, items: list[WorkItem], records: dict[str, Record], fingerprint: str) -> None:
        """Build the artifact from the valid records of ``items`` (failed ones included)."""

    def damaged_items(self) -> dict[str, str]:
        """Keys whose recorded output is visibly gone (a missing or resized file), and why.

        The runner treats them as not done, so ``vpipe status`` does not call a stage
        with a truncated shard complete and ``vpipe run`` recomputes those items.
        """
        return {}

    def artifact_fingerprint(self, items: list[WorkItem]) -> str:
        """Changes whenever any item's fingerprint, or the item set, changes."""
        return fingerprint(self.name, sorted((item.key, item.fingerprint) for item in items))

    def artifact_is_current(self, artifact_fingerprint: str) -> bool:
        marker = self.journal_dir / "artifact.json"
        if not self.artifact.exists() or not marker.exists():
            return False
        return json.loads(marker.read_text()).get("fingerprint") == artifact_fingerprint

    def mark_artifact(self, artifact_fingerprint: str) -> None:
        atomic_write_text(
            self.journal_dir / "artifact.json",
            json.dumps({"fingerprint": artifact_fingerprint, "artifact": str(self.artifact)}),
        )
