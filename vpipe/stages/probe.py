"""The probe stage: open every video once and record what actually decodes.

Its artifact, ``manifest.parquet``, is the spine of every later stage. Frame
counts come from decoding, not container headers (which lie), and a video that
cannot be read becomes a row with ``status == "failed"`` and the reason.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from vpipe.artifacts.records import DatasetConfig
from vpipe.artifacts.rows import ManifestRow, columns
from vpipe.data.base import VideoEntry
from vpipe.pipeline.executor import ItemFn, WorkItem
from vpipe.pipeline.fingerprint import fingerprint
from vpipe.pipeline.fingerprint_columns import source_fingerprints
from vpipe.pipeline.journal import Record
from vpipe.pipeline.stage import Stage
from vpipe.pipeline.tables import write_table
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.dataset import list_videos

MANIFEST_COLUMNS = columns(ManifestRow)


def probe_item(decoder: str, path: str) -> list[dict[str, Any]]:
    from vpipe.video.decode import probe_video  # PyAV: only where a video is opened

    info = probe_video(path, decoder=decoder)
    return [
        {
            "num_frames": info.num_frames,
            "fps": info.fps,
            "width": info.width,
            "height": info.height,
            "codec": info.codec,
        }
    ]


class ProbeStage(Stage):
    name = "probe"

    def __init__(self, workspace: DatasetWorkspace, config: DatasetConfig, *, decoder: str = "auto"):
        super().__init__(workspace)
        self.config = config
        self.decoder = decoder
        self._entries: list[VideoEntry] | None = None

    @property
    def artifact(self) -> Path:
        return self.workspace.manifest_path

    def settings(self) -> dict[str, Any]:
        return {"decoder": self.decoder, "adapter": self.config.adapter, "split": self.config.split}

    @property
    def entries(self) -> list[VideoEntry]:
        if self._entries is None:
            _, self._entries = list_videos(self.config)
        return self._entries

    def item_fingerprints(self) -> tuple[pa.Array, pa.Array]:
        """Per video, ``fingerprint(decoder, file_fingerprint(path))``, column-wise."""
        keys = pa.array([entry.video_id for entry in self.entries], pa.string())
        return keys, source_fingerprints(self.decoder, [str(entry.path) for entry in self.entries])

    def items(self) -> list[WorkItem]:
        fingerprints = self.item_fingerprints()[1].to_pylist()
        return [
            WorkItem(key=entry.video_id, fingerprint=fp, payload=str(entry.path), path=str(entry.path))
            for entry, fp in zip(self.entries, fingerprints)
        ]

    def item_fn(self) -> ItemFn:
        return partial(probe_item, self.decoder)

    def artifact_fingerprint(self, items: list[WorkItem]) -> str:
        """Labels and splits are part of the manifest: changing ``--split`` rewrites it."""
        listing = [(e.video_id, e.label, e.label_name, e.split) for e in self.entries]
        return fingerprint(super().artifact_fingerprint(items), listing)

    def write_artifact(self, items: list[WorkItem], records: dict[str, Record], fingerprint: str) -> None:
        rows = []
        for entry in self.entries:
            record = records.get(entry.video_id)
            probed = record.rows[0] if record is not None and record.ok else {}
            rows.append(
                {
                    "video_id": entry.video_id,
                    "path": str(entry.path),
                    "label": entry.label,
                    "label_name": entry.label_name,
                    "split": entry.split,
                    "num_frames": probed.get("num_frames", 0),
                    "fps": probed.get("fps", 0.0),
                    "width": probed.get("width", 0),
                    "height": probed.get("height", 0),
                    "codec": probed.get("codec", ""),
                    "status": "ok" if probed else "failed",
                    "error": "" if probed else (record.error if record else "not probed"),
                }
            )
        manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).astype(
            {"label": "int64", "num_frames": "int64", "fps": "float64", "width": "int64", "height": "int64"}
        )
        write_table(manifest, self.artifact, fingerprint=fingerprint)
