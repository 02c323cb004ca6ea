"""The plan stage: which frames and crops make each clip of each video.

A plan is computed once and shared by the flow and extract stages, so rgb and
flow features of a clip always come from the same frames, and a rerun with the
same seed reproduces every random window and crop exactly.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import partial
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vpipe.pipeline.executor import ItemFn, WorkItem
from vpipe.pipeline.fingerprint import canonical_json
from vpipe.pipeline.fingerprint_columns import json_texts, row_fingerprints
from vpipe.pipeline.journal import Record
from vpipe.pipeline.stage import Stage
from vpipe.pipeline.tables import write_table
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.video.plan import PLAN_SCHEMA, SamplerConfig, plan_video


def plan_item(config: SamplerConfig, video: dict[str, Any]) -> list[dict[str, Any]]:
    return plan_video(
        video["video_id"], video["num_frames"], video["height"], video["width"], video["split"], config
    )


class PlanStage(Stage):
    name = "plan"
    in_process = True

    def __init__(
        self, workspace: DatasetWorkspace, config: SamplerConfig, *, plan_name: str | None = None, probe: Stage | None = None
    ):
        super().__init__(workspace)
        self.config = config
        self.plan_name = plan_name or config.name
        self.probe = probe

    def requires(self) -> Sequence[Stage]:
        """The probe stage that writes the manifest, when the job names it."""
        return (self.probe,) if self.probe is not None else ()

    def settings(self) -> dict[str, Any]:
        return {"sampler": asdict(self.config)}

    @property
    def journal_name(self) -> str:
        return f"plan-{self.plan_name}"

    @property
    def artifact(self) -> Path:
        return self.workspace.plan_path(self.plan_name)

    def _usable(self) -> pa.Table:
        """The manifest rows a plan covers: probed ``ok``, in a split that is used."""
        manifest = self.workspace.read_manifest_columns(["video_id", "num_frames", "height", "width", "split", "path", "status"])
        keep = pc.and_(pc.equal(manifest["status"], "ok"), pc.not_equal(manifest["split"], "unused"))
        return manifest.filter(keep).drop_columns(["status"])

    def item_fingerprints(self) -> tuple[pa.Array, pa.Array]:
        """Per video, ``fingerprint(sampler fingerprint, num_frames, height, width, split)``."""
        return self._fingerprints(self._usable())

    def _fingerprints(self, usable: pa.Table) -> tuple[pa.Array, pa.Array]:
        video_facts = (json_texts(usable[name]) for name in ("num_frames", "height", "width", "split"))
        keys = usable["video_id"].combine_chunks()
        return keys, row_fingerprints(canonical_json(self.config.fingerprint()), *video_facts)

    def items(self) -> list[WorkItem]:
        usable = self._usable()
        fingerprints = self._fingerprints(usable)[1].to_pylist()
        return [
            WorkItem(key=video["video_id"], fingerprint=fp, payload=video, path=video["path"])
            for video, fp in zip(usable.to_pylist(), fingerprints)
        ]

    def item_fn(self) -> ItemFn:
        return partial(plan_item, self.config)

    def write_artifact(self, items: list[WorkItem], records: dict[str, Record], fingerprint: str) -> None:
        rows = [row for item in items if item.key in records for row in records[item.key].rows]
        rows.sort(key=lambda r: (r["video_id"], r["clip"], r["view"]))
        table = pa.Table.from_pylist(rows, schema=PLAN_SCHEMA)
        write_table(table, self.artifact, fingerprint=fingerprint, metadata={"sampler": json.dumps(asdict(self.config), sort_keys=True)})
