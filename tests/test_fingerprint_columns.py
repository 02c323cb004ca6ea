"""Column-wise fingerprints equal the per-item ones, byte for byte of their JSON.

A different byte would make every stored item of a workspace look stale (or, worse,
collide with another configuration), so each piece is checked against
``json.dumps`` / :func:`fingerprint` on the same values, edge cases included.
"""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.fingerprint_reference import clip_signature
from vpipe.pipeline.fingerprint import canonical_json, file_fingerprint, fingerprint
from vpipe.pipeline.fingerprint_columns import (
    file_fingerprints,
    grouped_json_lists,
    json_texts,
    row_fingerprints,
    source_fingerprints,
)
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.planned_videos import plan_jobs
from vpipe.stages.plan_columns import plan_video_columns
from vpipe.video.plan import PLAN_SCHEMA, plan_video, sampler_config

STRINGS = ["", "train", "a/b c", 'quote"d', "back\\slash", "tab\there", "new\nline", "é", "日本", "\x7f", "~"]


@pytest.mark.parametrize(
    "values, kind",
    [
        ([0, -1, 7, 2**31 - 1, -(2**31)], pa.int32()),
        ([0, 2**62, -(2**62)], pa.int64()),
        ([True, False], pa.bool_()),
        (STRINGS, pa.string()),
        (["train", "test", "val"], pa.string()),
        ([[1, 2, 3], [], [-4]], pa.list_(pa.int32())),
        ([["a", 'b"'], []], pa.list_(pa.string())),
    ],
)
def test_json_texts_are_canonical_json(values, kind) -> None:
    column = pa.array(values, kind)
    assert json_texts(column).to_pylist() == [canonical_json(v) for v in values]
    assert json_texts(column.slice(1)).to_pylist() == [canonical_json(v) for v in values[1:]]
    assert json_texts(pa.chunked_array([column, column])).to_pylist() == [canonical_json(v) for v in values * 2]


def test_json_texts_refuse_what_they_cannot_write_exactly() -> None:
    with pytest.raises(TypeError, match="double"):
        json_texts(pa.array([1.5]))
    with pytest.raises(ValueError, match="nulls"):
        json_texts(pa.array([1, None]))


def test_row_fingerprints_equal_fingerprint_of_each_row() -> None:
    rng = random.Random(0)
    sizes = [rng.randint(0, 10**9) for _ in range(200)]
    splits = [rng.choice(STRINGS) for _ in range(200)]
    frames = [[rng.randint(0, 99) for _ in range(rng.randint(0, 5))] for _ in range(200)]
    shared = {"b": [1, 2.5, None], "a": True}
    got = row_fingerprints(
        canonical_json(shared), json_texts(pa.array(sizes)), json_texts(pa.array(splits)), json_texts(pa.array(frames))
    )
    assert got.to_pylist() == [fingerprint(shared, s, p, f) for s, p, f in zip(sizes, splits, frames)]


def test_grouped_json_lists_join_each_group() -> None:
    texts = json_texts(pa.array([1, 2, 3, 4]))
    assert grouped_json_lists(texts, pa.array([0, 3, 3, 4])).to_pylist() == ["[1,2,3]", "[]", "[4]"]


def test_file_and_source_fingerprints(tmp_path: Path) -> None:
    present = tmp_path / "a.mp4"
    present.write_bytes(b"12345")
    paths = [str(present), str(tmp_path / "missing.mp4")]
    assert file_fingerprints(paths).to_pylist() == [file_fingerprint(p) for p in paths]
    assert source_fingerprints("auto", pa.array(paths)).to_pylist() == [fingerprint("auto", file_fingerprint(p)) for p in paths]


def _planned_workspace(tmp_path: Path, videos: int, sampler: str, **options) -> DatasetWorkspace:
    """A manifest and a real plan (random windows, crops, flips) of ``videos`` videos."""
    rng = random.Random(videos)
    ws = DatasetWorkspace(tmp_path, "d")
    ws.dir.mkdir(parents=True)
    config = sampler_config(sampler, **options)
    rows, manifest = [], []
    for i in range(videos):
        video_id = f"class{i % 3}/v{i:03d}" + ('"q' if i == 5 else "")
        split = rng.choice(["train", "test"])
        frames, height, width = rng.randint(1, 90), rng.randint(120, 200), rng.randint(120, 260)
        rows += plan_video(video_id, frames, height, width, split, config)
        manifest.append({"video_id": video_id, "path": f"/videos/{video_id}.mp4", "num_frames": frames,
                         "label": i % 3, "label_name": f"class{i % 3}", "split": split, "status": "ok"})  # fmt: skip
    rng.shuffle(rows)  # the columns must not depend on the plan's row order
    pq.write_table(pa.Table.from_pylist(manifest), ws.manifest_path)
    ws.plan_path(config.name).parent.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=PLAN_SCHEMA), ws.plan_path(config.name))
    return ws


@pytest.mark.parametrize(
    "sampler, options",
    [("li3d", {"need": 16, "clips": 2, "size": 112, "short_side": 128, "train_views": 3}), ("tsn", {}), ("dense", {})],
)
def test_plan_video_columns_hold_each_video_s_clip_signature(tmp_path: Path, sampler: str, options: dict) -> None:
    ws = _planned_workspace(tmp_path, 40, sampler, **options)
    plan = sampler_config(sampler, **options).name
    columns = plan_video_columns(ws, plan)
    jobs = plan_jobs(ws, plan)
    assert columns["video_id"].to_pylist() == list(jobs)
    assert columns["path"].to_pylist() == [job.path for job in jobs.values()]
    assert columns["signature"].to_pylist() == [canonical_json(clip_signature(job)) for job in jobs.values()]
    assert any(c.crop.flip for job in jobs.values() for c in job.clips) or sampler != "li3d"
