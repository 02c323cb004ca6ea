"""The plan stage: which frames and crops make each clip of each video.

A plan is computed once and shared by the flow and extract stages, so rgb and
flow features of a clip always come from the same frames, and a rerun with the
same seed reproduces every random window and crop exactly.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa

from vpipe.pipeline.executor import ItemFn, WorkItem
from vpipe.pipeline.fingerprint import fingerprint
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

    def __init__(self, workspace: DatasetWorkspace, config: SamplerConfig, *, plan_name: str | None = None):
        super().__init__(workspace)
        self.config = config
        self.plan_name = plan_name or config.name

    @property
    def journal_name(self) -> str:
        return f"plan-{self.plan_name}"

    @property
    def artifact(self) -> Path:
        return self.workspace.plan_path(self.plan_name)

    def items(self) -> list[WorkItem]:
        manifest = self.workspace.read_manifest()
        usable = manifest[(manifest["status"] == "ok") & (manifest["split"] != "unused")]
        config_fp = self.config.fingerprint()
        items = []
        for video in usable[["video_id", "num_frames", "height", "width", "split", "path"]].to_dict("records"):
            video = {k: (int(v) if k in ("num_frames", "height", "width") else v) for k, v in video.items()}
            items.append(
                WorkItem(
                    key=video["video_id"],
                    fingerprint=fingerprint(config_fp, video["num_frames"], video["height"], video["width"], video["split"]),
                    payload=video,
                    path=video["path"],
                )
            )
        return items

    def item_fn(self) -> ItemFn:
        return partial(plan_item, self.config)

    def write_artifact(self, items: list[WorkItem], records: dict[str, Record], fingerprint: str) -> None:
        rows = [row for item in items if item.key in records for row in records[item.key].rows]
        rows.sort(key=lambda r: (r["video_id"], r["clip"], r["view"]))
        table = pa.Table.from_pylist(rows, schema=PLAN_SCHEMA)
        write_table(table, self.artifact, fingerprint=fingerprint, metadata={"sampler": json.dumps(asdict(self.config), sort_keys=True)})
