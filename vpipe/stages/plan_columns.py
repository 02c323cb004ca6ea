"""A plan's videos as columns: what the flow and extract fingerprints share, per video.

A flow or extract item fingerprint is ``fingerprint(stage settings, the video's input,
clip signature)``. The clip signature, ``[(clip, view, frames, crop fields), ...]`` over
the video's planned clips in (clip, view) order, is the long part, and the same for the flow stage
and every extract stage of a plan. Built from :class:`VideoJob` objects it cost a
Python object per clip and a ``json.dumps`` per video in every stage; here it is
written by Arrow's string kernels over the plan's columns, byte for byte the text
the per-video form gave (``tests/fingerprint_reference.py``, checked in
``tests/test_fingerprint_columns.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vpipe.catalog import BACKBONE_PLANS
from vpipe.errors import StageError
from vpipe.pipeline.fingerprint_columns import grouped_json_lists, json_lists, json_texts
from vpipe.pipeline.workspace import DatasetWorkspace

#: The crop fields of a clip signature in :func:`canonical_json`'s (sorted) key order,
#: with the plan column each comes from: :class:`vpipe.video.views.Crop`'s fields.
CROP_FIELDS = (
    ("flip", "flip"), ("h", "crop_h"), ("resize_h", "resize_h"), ("resize_w", "resize_w"),
    ("w", "crop_w"), ("x", "crop_x"), ("y", "crop_y"),
)  # fmt: skip

#: plan path -> ((its stat, the manifest's stat), the plan's video columns).
_CACHE: dict[str, tuple[tuple | None, pa.Table]] = {}


def existing_plan(workspace: DatasetWorkspace, plan: str) -> Path:
    """The plan's path; a :class:`StageError` naming ``vpipe plan`` when it does not exist."""
    path = workspace.plan_path(plan)
    if not path.exists():
        # A backbone's own plan is named after it (vpipe.catalog.backbone_plan).
        made_by = f" --backbone {plan}" if plan in BACKBONE_PLANS else ""
        raise StageError(f"no plan {plan!r} at {path}: run `vpipe plan --dataset {workspace.dataset}{made_by}` first")
    return path


def plan_video_columns(workspace: DatasetWorkspace, plan: str) -> pa.Table:
    """One row per planned video, sorted by id: ``video_id``, its manifest ``path`` and the
    JSON text of its clip ``signature``.

    Built once per process while neither the plan nor the manifest changes on disk (both
    are replaced by atomic renames, so a rewrite changes their stat).
    """
    path = existing_plan(workspace, plan)
    key = (stat_key(path), stat_key(workspace.manifest_path)) if workspace.manifest_path.exists() else None
    cached = _CACHE.get(str(path))
    if key is not None and cached is not None and cached[0] == key:
        return cached[1]
    manifest = workspace.read_manifest_columns(["video_id", "path"])  # or its clear error
    table = _video_columns(pq.read_table(path), manifest, workspace.dataset)
    _CACHE[str(path)] = (key, table)
    return table


def stat_key(path: Path) -> tuple[int, int]:
    """Size and modification time: what tells a cached reading of a file from a stale one."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def clip_signature_texts(plan: pa.Table) -> pa.Array:
    """Per plan row, the JSON of ``(clip, view, frames, crop fields)``."""
    crop = [pa.scalar("{")]
    for n, (name, column) in enumerate(CROP_FIELDS):
        crop += [pa.scalar(("," if n else "") + f'"{name}":'), json_texts(plan[column])]
    crop_json = pc.binary_join_element_wise(*crop, pa.scalar("}"), "")
    return json_lists(json_texts(plan["clip"]), json_texts(plan["view"]), json_texts(plan["frames"]), crop_json)


def _video_columns(plan: pa.Table, manifest: pa.Table, dataset: str) -> pa.Table:
    plan = plan.take(pc.sort_indices(plan, [("video_id", "ascending"), ("clip", "ascending"), ("view", "ascending")]))
    video_ids = plan["video_id"].combine_chunks()
    if len(video_ids) == 0:
        empty = pa.array([], pa.string())
        return pa.table({"video_id": empty, "path": empty, "signature": empty})
    starts = np.flatnonzero(pc.not_equal(video_ids[1:], video_ids[:-1]).to_numpy(zero_copy_only=False)) + 1
    offsets = pa.array(np.concatenate([[0], starts, [len(video_ids)]]).astype(np.int32))
    keys = video_ids.take(pa.array(np.concatenate([[0], starts])))
    where = pc.index_in(keys, value_set=manifest["video_id"].combine_chunks())
    if where.null_count:
        missing = keys.filter(pc.is_null(where))[0].as_py()
        raise StageError(
            f"the plan holds video {missing!r}, which the manifest does not: the plan is older than the probe; "
            f"run `vpipe plan --dataset {dataset}` again"
        )
    paths = pc.cast(manifest["path"].combine_chunks().take(where), pa.string())
    signatures = grouped_json_lists(clip_signature_texts(plan), offsets)
    return pa.table({"video_id": keys, "path": paths, "signature": signatures})
