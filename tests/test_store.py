"""HDF5 shards, the Parquet index and the reader, checked against numpy and raw h5py."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vpipe.errors import StageError
from vpipe.store import (
    INDEX_SCHEMA,
    FeatureSet,
    ShardWriter,
    collate_padded,
    orphan_shards,
    read_index,
    shard_name,
    write_index,
)

PROVENANCE = {"backbone": "li3d", "stream": "rgb", "weights_sha256": "ab" * 32, "vpipe": "0.1.0"}


def _clip_arrays(rng: np.random.Generator, tau: int = 4) -> dict[str, np.ndarray]:
    return {
        "pool": rng.normal(size=(tau, 16)).astype(np.float32),
        "grid": rng.normal(size=(tau, 8, 3, 3)),
    }


def _write_feature_set(directory: Path, clips_per_video: dict[str, int], views: int = 1, seed: int = 0):
    """Write one shard per video (clips added in reverse order) and the index.

    Returns the original arrays keyed by (video_id, view, clip).
    """
    rng = np.random.default_rng(seed)
    originals: dict[tuple[str, int, int], dict[str, np.ndarray]] = {}
    rows = []
    for video_id, n_clips in clips_per_video.items():
        with ShardWriter(directory / shard_name("extract", video_id), attrs=PROVENANCE) as writer:
            for view in range(views):
                for clip in reversed(range(n_clips)):
                    arrays = _clip_arrays(rng)
                    originals[video_id, view, clip] = arrays
                    writer.add(video_id, clip, view, arrays)
        rows += writer.rows
    write_index(directory, rows)
    return originals


def test_round_trip_of_layers_and_dtypes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(3, 8, 1024)).astype(np.float32) * 10
    grid = rng.normal(size=(3, 2, 64, 7, 7))
    flow = rng.integers(0, 256, size=(3, 16, 2, 28, 28), dtype=np.uint8)
    writer = ShardWriter(tmp_path / "s.h5", attrs=PROVENANCE, dtypes={"grid": "float32"})
    for clip in range(3):
        writer.add("v", clip, 0, {"pool": pool[clip], "grid": grid[clip], "flow": flow[clip]})
    rows = writer.close()
    write_index(tmp_path, rows)

    with h5py.File(tmp_path / "s.h5") as f:
        assert f["layers/pool"].dtype == np.float16
        assert f["layers/grid"].dtype == np.float32
        assert f["layers/flow"].dtype == np.uint8
        assert f["layers/flow"].compression == "gzip"
        assert f["layers/pool"].compression is None
        for name, shape in [("pool", (8, 1024)), ("grid", (2, 64, 7, 7)), ("flow", (16, 2, 28, 28))]:
            assert f[f"layers/{name}"].chunks == (1, *shape)

    with FeatureSet.open(tmp_path) as fs:
        got = fs.clips("v")
        assert fs.provenance == PROVENANCE
        assert fs.layers == ["pool", "grid", "flow"]
    np.testing.assert_array_equal(got["pool"], pool.astype(np.float16))
    np.testing.assert_allclose(got["pool"].astype(np.float32), pool, rtol=2**-11, atol=2**-24)
    np.testing.assert_array_equal(got["grid"], grid.astype(np.float32))
    np.testing.assert_array_equal(got["flow"], flow)


def test_float16_overflow_and_shape_mismatch_raise(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "a.h5", attrs={}) as writer:
        with pytest.raises(ValueError, match="float32"):
            writer.add("v", 0, 0, {"pool": np.full((2, 4), 1e6)})
        writer.add("v", 0, 0, {"pool": np.zeros((2, 4))})
        with pytest.raises(ValueError, match=r"share shape"):
            writer.add("v", 1, 0, {"pool": np.zeros((3, 4))})
        with pytest.raises(ValueError, match="differ"):
            writer.add("v", 1, 0, {"pool": np.zeros((2, 4)), "grid": np.zeros(2)})
        with pytest.raises(ValueError, match="twice"):
            writer.add("v", 0, 0, {"pool": np.zeros((2, 4))})
    with h5py.File(tmp_path / "a.h5") as f:
        assert f["layers/pool"].shape == (1, 2, 4)


def test_rename_only_on_close_and_nothing_left_on_error(tmp_path: Path) -> None:
    path = tmp_path / "features" / shard_name("extract", "task-1")
    tmp = path.with_name(f".{path.name}.tmp")
    with ShardWriter(path, attrs=PROVENANCE) as writer:
        writer.add("v", 0, 0, {"pool": np.ones((2, 4))})
        assert tmp.is_file() and not path.exists()
    assert path.is_file() and not tmp.exists()

    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "b.h5", attrs=PROVENANCE) as writer:
            writer.add("v", 0, 0, {"pool": np.ones((2, 4))})
            raise RuntimeError("worker died")
    assert list(tmp_path.iterdir()) == [tmp_path / "features"]


def test_shard_name_is_deterministic() -> None:
    name = shard_name("extract", "ucf101/v_Drum_g01_c01")
    assert name == shard_name("extract", "ucf101/v_Drum_g01_c01")
    assert name != shard_name("flow", "ucf101/v_Drum_g01_c01")
    assert name.startswith("shard-") and name.endswith(".h5") and len(name) == len("shard-") + 12 + 3


def test_index_row_alone_reads_clips_back_in_clip_order(tmp_path: Path) -> None:
    originals = _write_feature_set(tmp_path, {"b": 3, "a": 5}, views=2)
    index = read_index(tmp_path)
    assert index.columns.tolist() == INDEX_SCHEMA.names
    assert len(index) == 16

    for row in index.itertuples():
        spec = json.loads(row.layers)["pool"]
        with h5py.File(tmp_path / row.shard) as f:
            array = f[spec["dataset"]][row.row]
        assert list(array.shape) == spec["shape"] and array.dtype.name == spec["dtype"]
        expected = originals[row.video_id, row.view, row.clip]["pool"].astype(np.float16)
        np.testing.assert_array_equal(array, expected)

    with FeatureSet.open(tmp_path) as fs:
        assert fs.video_ids() == ["a", "b"]
        assert fs.views("a") == [0, 1]
        stacked = fs.clips("a", view=1, layer="grid")
        expected = np.stack([originals["a", 1, c]["grid"] for c in range(5)]).astype(np.float16)
        np.testing.assert_array_equal(stacked, expected)
        seen = [(v, c, w) for v, c, w, _ in fs]
        assert seen == sorted(seen, key=lambda k: (k[0], k[2], k[1]))


def test_sequence_concatenates_clips_along_time(tmp_path: Path) -> None:
    originals = _write_feature_set(tmp_path, {"a": 3})
    with FeatureSet.open(tmp_path) as fs:
        sequence = fs.sequence("a", layer="pool")
    expected = np.concatenate([originals["a", 0, c]["pool"] for c in range(3)]).astype(np.float16)
    assert sequence.shape == (12, 16)
    np.testing.assert_array_equal(sequence, expected)


def test_torch_dataset_and_collate_padded(tmp_path: Path) -> None:
    originals = _write_feature_set(tmp_path, {"a": 1, "b": 3}, views=2)
    with FeatureSet.open(tmp_path) as fs:
        assert len(fs.torch_dataset()) == 4
        dataset = fs.torch_dataset("pool", video_ids=["b", "a"], views=0, labels={"a": 7, "b": 2})
    assert dataset.items == [("b", 0), ("a", 0)]
    padded, lengths, labels = collate_padded([dataset[0], dataset[1]])
    assert padded.dtype == torch.float32 and padded.shape == (2, 12, 16)
    assert lengths.tolist() == [12, 4]
    assert labels.tolist() == [2, 7]
    np.testing.assert_array_equal(padded[1, :4].numpy(), originals["a", 0, 0]["pool"].astype(np.float16))
    assert torch.all(padded[1, 4:] == 0)


def test_dataloader_with_worker_processes(tmp_path: Path) -> None:
    _write_feature_set(tmp_path, {f"v{i}": 1 + i % 3 for i in range(12)})
    with FeatureSet.open(tmp_path) as fs:
        dataset = fs.torch_dataset(labels={f"v{i}": i for i in range(12)})
        dataset[0]
        loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=collate_padded)
        labels = torch.cat([batch_labels for _, _, batch_labels in loader])
    assert sorted(labels.tolist()) == list(range(12))


def _bytes_read() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs Linux /proc/self/io")
def test_reading_one_clip_reads_one_chunk_not_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    row_bytes = 8 * 2 * 128 * 128
    with ShardWriter(tmp_path / "flow.h5", attrs={}) as writer:
        for video in range(64):
            flow = rng.integers(0, 256, size=(8, 2, 128, 128), dtype=np.uint8)
            writer.add(f"v{video:02d}", 0, 0, {"flow": flow})
    write_index(tmp_path, writer.rows)
    assert (tmp_path / "flow.h5").stat().st_size > 60 * row_bytes

    with FeatureSet.open(tmp_path) as fs:
        fs.provenance
        before = _bytes_read()
        clip = fs.clips("v40", layer="flow")
        read = _bytes_read() - before
    assert clip.shape == (1, 8, 2, 128, 128)
    assert read < 2 * row_bytes


def test_missing_index_names_directory_and_command(tmp_path: Path) -> None:
    directory = tmp_path / "ucf101" / "features" / "li3d-rgb"
    with pytest.raises(StageError) as error:
        FeatureSet.open(directory)
    assert str(directory) in str(error.value)
    assert "vpipe extract --dataset ucf101" in str(error.value)


def test_unknown_video_raises_stage_error(tmp_path: Path) -> None:
    _write_feature_set(tmp_path, {"a": 1})
    with FeatureSet.open(tmp_path) as fs, pytest.raises(StageError, match="'zz'"):
        fs.clips("zz")


def test_orphan_shards_lists_unreferenced_and_temporary_files(tmp_path: Path) -> None:
    _write_feature_set(tmp_path, {"a": 1, "b": 1})
    stale = tmp_path / shard_name("extract", "old")
    stale.write_bytes(b"")
    leftover = tmp_path / ".shard-0123456789ab.h5.tmp"
    leftover.write_bytes(b"")
    assert orphan_shards(tmp_path, read_index(tmp_path)) == sorted([stale, leftover])


def test_write_index_rejects_duplicate_clips(tmp_path: Path) -> None:
    row = {"video_id": "a", "clip": 0, "view": 0, "shard": "s.h5", "row": 0, "layers": "{}"}
    with pytest.raises(ValueError, match="more than once"):
        write_index(tmp_path, [row, dict(row, row=1)])
    assert not list(tmp_path.iterdir())
