"""What the flow and extract stages share: per-video work over the clips of one plan.

Both read a plan's videos, hand a task several videos at once (``chunk_size``) so that
one batch spans videos and one HDF5 shard holds a task's output, and keep an index of
their shards that is rebuilt from the journal. The jobs a plan lists are built once per
process (:func:`plan_jobs`) and shared by every stage over that plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from vpipe.artifacts.rows import PlanRow, read_rows
from vpipe.device import default_videos_per_task
from vpipe.pipeline.executor import WorkItem
from vpipe.pipeline.journal import Journal, Record
from vpipe.pipeline.stage import Stage
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.plan_columns import existing_plan, stat_key
from vpipe.store.index import INDEX_FILE, damaged_videos, orphan_shards, write_index
from vpipe.video.jobs import VideoJob, jobs_from_plan


def read_plan(workspace: DatasetWorkspace, plan: str) -> pd.DataFrame:
    return read_rows(
        existing_plan(workspace, plan), PlanRow, fix=f"run `vpipe plan --dataset {workspace.dataset}` again"
    )


#: plan path -> ((its stat, the manifest's stat), the plan's jobs); see :func:`plan_jobs`.
_JOBS_CACHE: dict[str, tuple[tuple | None, dict[str, VideoJob]]] = {}


def plan_jobs(workspace: DatasetWorkspace, plan: str) -> dict[str, VideoJob]:
    """The plan's :class:`VideoJob` per video, built once per process while neither the
    plan nor the manifest changes on disk.

    The flow stage and every extract stage of a plan list the same jobs; at Kinetics
    size each build is a 240k-row sort and grouping, which ``vpipe run`` and
    ``vpipe status`` would otherwise repeat once per stage. Both files are replaced by
    atomic renames, so a rewrite always changes the key.
    """
    return _plan_cache(workspace, plan)[1]


def _plan_cache(workspace: DatasetWorkspace, plan: str) -> tuple[tuple | None, dict[str, VideoJob]]:
    path, manifest_path = workspace.plan_path(plan), workspace.manifest_path
    key = (stat_key(path), stat_key(manifest_path)) if path.exists() and manifest_path.exists() else None
    cached = _JOBS_CACHE.get(str(path))
    if key is not None and cached is not None and cached[0] == key:
        return cached
    jobs = jobs_from_plan(read_plan(workspace, plan), workspace.read_manifest())  # or their clear errors
    _JOBS_CACHE[str(path)] = entry = (key, jobs)
    return entry


def remove_orphans(directory: Path, records: dict[str, Record]) -> None:
    """Delete shards no journal record points to, and temporaries of killed writers.

    Records of videos outside the current item set (another split) still count, so
    switching back to them finds their shards.
    """
    referenced = [row["shard"] for record in records.values() if record.ok for row in record.rows]
    for orphan in orphan_shards(directory, pd.DataFrame({"shard": referenced}, dtype=str)):
        orphan.unlink(missing_ok=True)


def missing_shards(directory: Path, records: dict[str, Record]) -> dict[str, list[str]]:
    """Shards that successful ``records`` point at and ``directory`` lacks, each with the
    keys of the records that point at it."""
    present: dict[str, bool] = {}
    missing: dict[str, list[str]] = {}
    for key, record in records.items():
        if not record.ok:
            continue
        for shard in dict.fromkeys(str(row["shard"]) for row in record.rows):
            if shard not in present:
                present[shard] = (directory / shard).is_file()
            if not present[shard]:
                missing.setdefault(shard, []).append(key)
    return missing


class PlannedVideoStage(Stage):
    """A stage whose items are the videos of plan ``plan``, computed on the GPU when there is
    one, and whose artifact is a directory of shards and their index.

    A subclass fingerprints its items (:meth:`item_fingerprints`) and says how a task
    computes them (:meth:`item_fn`); listing, damage checks and the index are here.
    """

    batched = True
    resources = {"GPU": 1}

    def __init__(
        self,
        workspace: DatasetWorkspace,
        *,
        plan: str,
        device: str,
        videos_per_task: int | None,
        decoder: str,
        plan_stage: Stage | None,
    ):
        super().__init__(workspace)
        self.plan, self.device, self.decoder, self.plan_stage = plan, device, decoder, plan_stage
        self.chunk_size = videos_per_task or default_videos_per_task(device)

    @classmethod
    def journal_of(cls, artifact_name: str) -> str:
        """The state directory of this stage's artifact ``artifact_name`` (a feature set,
        a plan's flow): how :mod:`vpipe.stages.verify` finds the journal of a directory."""
        return f"{cls.name}-{artifact_name}"

    def requires(self) -> Sequence[Stage]:
        """The plan stage, when the job names it."""
        return (self.plan_stage,) if self.plan_stage is not None else ()

    def items(self) -> list[WorkItem]:
        keys, fingerprints = self.item_fingerprints()
        jobs = plan_jobs(self.workspace, self.plan)
        return [
            WorkItem(key=key, fingerprint=fp, payload=jobs[key], path=jobs[key].path)
            for key, fp in zip(keys.to_pylist(), fingerprints.to_pylist())
        ]

    def damaged_items(self) -> dict[str, str]:
        """Videos whose shard is missing or resized; without an index, those whose journal
        record points at a shard that is gone.

        The index is written when a stage finishes, so a run stopped part-way leaves
        recorded videos and their shards but no index: those are done and resume. A
        deleted artifact directory leaves the records alone: counting them done made
        ``vpipe status`` call a feature set that no longer exists finished.
        """
        if (self.artifact / INDEX_FILE).is_file():
            return damaged_videos(self.artifact)
        missing = missing_shards(self.artifact, Journal(self.journal_dir).load())
        return {key: f"{self.artifact / shard}: missing" for shard, keys in missing.items() for key in keys}

    def write_artifact(self, items: list[WorkItem], records: dict[str, Record], fingerprint: str) -> None:
        rows = [row for item in items if item.key in records for row in records[item.key].rows]
        write_index(self.artifact, rows)
        remove_orphans(self.artifact, Journal(self.journal_dir).load())
