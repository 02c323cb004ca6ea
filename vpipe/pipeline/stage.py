"""Stages: functions from artifacts to artifacts, run item by item.

Every stage, per video or over the whole dataset, is one protocol:

* :meth:`Stage.requires`: the stages whose artifacts it reads. ``vpipe run`` derives its
  order from these declarations (:mod:`vpipe.pipeline.dag`), and a stage reads an input
  through the stage that makes it, never by rebuilding that stage's names;
* :meth:`Stage.output`: a target of the artifact layer (:mod:`vpipe.artifacts.targets`)
  that owns the artifact's path, its fingerprint and ``complete()``;
* :meth:`Stage.items`: its work items, each with a fingerprint of its configuration and
  inputs, and a picklable per-item function; a whole-dataset step
  (:class:`WholeDatasetStage`) is a stage with one item.

The runner (:mod:`vpipe.pipeline.runner`) decides which items are missing or stale,
runs only those, and records failures; stages hold no resume logic of their own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from vpipe.artifacts.targets import MarkedTarget, SelfCheckedTarget, Target
from vpipe.pipeline.executor import ItemFn, WorkItem
from vpipe.pipeline.fingerprint import fingerprint
from vpipe.pipeline.item_state import DONE, FAILED, NEW, STALE, ItemStates, stage_item_states
from vpipe.pipeline.journal import Journal, Record
from vpipe.pipeline.workspace import DatasetWorkspace


def valid_records(items: Sequence[WorkItem], records: dict[str, Record]) -> dict[str, Record]:
    """The records that still describe ``items`` as they are now."""
    return {
        item.key: records[item.key]
        for item in items
        if item.key in records and records[item.key].fingerprint == item.fingerprint
    }

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
    #: Why items are stale: the options or inputs that changed since the artifact was made (status only).
    why: str = ""
    #: The stages of this run that (re)make this one's inputs first (dry run only): its
    #: counts are of the inputs on disk now, which those stages are about to replace.
    after: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        if self.after:
            return f"{self.stage}: will run after {_grouped(self.after)}"
        if not self.ready:
            return f"{self.stage}: not ready ({self.reason})"
        if self.computed == 0:
            work = "nothing to do, all up to date"
        else:
            work = f"computed {self.computed} in {self.seconds:.1f}s, {self.up_to_date} already up to date"
        damaged = f", {self.damaged} damaged (run `vpipe verify`)" if self.damaged else ""
        return f"{self.stage}: {self.done}/{self.total} done, {self.failed} failed{damaged} ({work})"


def _grouped(names: Sequence[str]) -> str:
    """Stage names by kind: ``plan, flow`` or ``train (4 stages)`` for several of one kind."""
    kinds: dict[str, list[str]] = {}
    for name in names:
        kinds.setdefault(name.split(":", 1)[0], []).append(name)
    return ", ".join(group[0] if len(group) == 1 else f"{kind} ({len(group)} stages)" for kind, group in kinds.items())


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
    def subject(self) -> str | None:
        """What this stage is about where a job runs its kind several times (a feature set,
        a run's inputs); ``None`` where a job has one stage of its kind."""
        return None

    @property
    def label(self) -> str:
        """The stage's one name, in reports, status, dry runs, failure records and
        ``--only`` / ``--until``: its kind, then its subject after a ``:``.

        ``probe``, ``plan``, ``flow``, ``extract:li3d-rgb``, ``encode:li3d-rgb``,
        ``retrieval``, ``train:li3d-rgb``, ``evaluate``. A bare kind (``extract``) selects
        every stage of that kind.
        """
        return self.name if self.subject is None else f"{self.name}:{self.subject}"

    @property
    def journal_name(self) -> str:
        """Distinguishes several artifacts of one stage (two plans, two feature sets); also the
        stage's identity in the DAG, since two stages with one state directory make one artifact."""
        return self.name

    @property
    def journal_dir(self) -> Path:
        return self.workspace.state_dir / self.journal_name

    def requires(self) -> Sequence[Stage]:
        """The stages whose artifacts this one reads; the DAG is derived from these."""
        return ()

    @property
    @abstractmethod
    def artifact(self) -> Path:
        """The file or directory this stage produces."""

    def output(self) -> Target:
        """The artifact as a target: current when its marker holds the fingerprint of today's items."""
        return MarkedTarget(self.artifact, self.journal_dir / "artifact.json", lambda: self.artifact_fingerprint(self.items()))

    def settings(self) -> dict[str, Any]:
        """The stage's own settings that enter its fingerprints, by name: what a dry run
        names when they changed since the artifact was made."""
        return {}

    def components(self) -> dict[str, Any]:
        """What the fingerprint is made of, stored beside it: the options, and each input's
        fingerprint as its stage last recorded it."""
        inputs = {stage.label: stage.output().recorded().get("fingerprint") for stage in self.requires()}
        return {"options": self.settings(), "inputs": inputs}

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

    def item_states(self) -> ItemStates:
        """Each item done, failed, stale or new, by its journal; what status and a dry run count."""
        keys, fingerprints = self.item_fingerprints()
        return stage_item_states(keys, fingerprints, self.journal_dir)

    def current_records(self, items: list[WorkItem], records: dict[str, Record]) -> dict[str, Record]:
        """The records that count as done or failed for ``items`` now: those made under their fingerprints."""
        return valid_records(items, records)

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

    def details(self) -> dict[str, Any]:
        """What the stage's report shows beyond counts (figures, tables), read from its artifact."""
        return {}


class WholeDatasetStage(Stage):
    """A stage whose one item is the whole dataset: a codebook, a training run, an index, the report.

    Its artifact carries its own fingerprints (:class:`SelfCheckedTarget`): the item is
    done when :meth:`is_current` says so, whether or not the journal ever saw it, so a
    workspace made before these stages kept a journal is not redone. A failure is
    recorded like any item's and kept until its fingerprint changes or ``--retry-failed``.
    """

    in_process = True

    @abstractmethod
    def item_fingerprint(self) -> str:
        """The fingerprint of the stage's options; raises StageError when inputs are missing."""

    @abstractmethod
    def is_current(self) -> bool:
        """Whether the artifact is there for today's inputs and options; raises StageError
        when inputs are missing."""

    @abstractmethod
    def work(self) -> dict[str, Any]:
        """Bring the artifact up to date (it may find parts of it current and keep them);
        return what the report shows of it."""

    def describe(self) -> dict[str, Any]:
        """What the report shows of an artifact this invocation did not make, read from it."""
        return {}

    def output(self) -> Target:
        marker = self.journal_dir / "components.json"  # only for reasons: the artifact says itself if it is current
        return SelfCheckedTarget(self.artifact, marker, self.item_fingerprint, self.is_current)

    def settings(self) -> dict[str, Any]:
        return {}

    def items(self) -> list[WorkItem]:
        return [WorkItem(key=self.label, fingerprint=self.item_fingerprint(), payload=None, path=str(self.artifact))]

    def item_fn(self) -> ItemFn:
        return self._run_item

    def _run_item(self, payload: None) -> list[dict[str, Any]]:
        self._worked = self.work()
        return []

    def details(self) -> dict[str, Any]:
        worked = getattr(self, "_worked", None)
        return worked if worked is not None else self.describe()

    def artifact_fingerprint(self, items: list[WorkItem]) -> str:
        return items[0].fingerprint

    def current_records(self, items: list[WorkItem], records: dict[str, Record]) -> dict[str, Record]:
        item = items[0]
        record = valid_records(items, records).get(item.key)
        if record is not None and not record.ok:
            return {item.key: record}
        if self.is_current():
            return {item.key: record or Record(key=item.key, fingerprint=item.fingerprint, ok=True, path=item.path)}
        return {}

    def item_states(self) -> ItemStates:
        items = self.items()
        current = self.current_records(items, Journal(self.journal_dir).load()).get(self.label)
        if current is not None:
            state = DONE if current.ok else FAILED
        else:
            state = STALE if self.artifact.exists() or self.output().recorded() else NEW
        return ItemStates(pa.array([self.label], pa.string()), np.array([state]))

    def write_artifact(self, items: list[WorkItem], records: dict[str, Record], fingerprint: str) -> None:
        """Nothing: :meth:`work` wrote the artifact."""
