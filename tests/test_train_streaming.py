"""Training streams per-frame maps from their shards: what it holds at once is a batch
plus the reader's bounded decoded-input cache, never the dataset.

The map heads' caches are tens to hundreds of GB at UCF101 size (BENCHMARKS.md,
``bench/scale.py``), so a trainer that gathered a split's inputs before its first step
would not run at all. numpy's allocations are reported to ``tracemalloc``, so the
traced peak of an epoch measures every array the reading side materialises (shard
rows, the cache, the float32 copies a batch is built from).
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vpipe.models.heads.registry import HeadInput
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.store import FeatureSet, ShardWriter, shard_name, write_index
from vpipe.train import TrainConfig, train
from vpipe.train.data import InputReader, loader

STREAMS = ("resnet50-rgb", "resnet50-flow")
VIDEOS, TEST, CLASSES = 48, 12, 4
FRAMES, GRID = 12, (64, 7, 7)
#: One video's float16 grid in one stream.
VIDEO_BYTES = FRAMES * int(np.prod(GRID)) * 2
BATCH = 4


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> DatasetWorkspace:
    """48 videos of 12 per-frame grids (64 × 7 × 7) per stream, 4 per shard; the class is
    an offset on a quarter of the channels."""
    root: Path = tmp_path_factory.mktemp("maps")
    rng = np.random.default_rng(0)
    ws = DatasetWorkspace(root, "maps")
    ids = [f"v{i:03d}" for i in range(VIDEOS)]
    for name in STREAMS:
        rows = []
        for first in range(0, VIDEOS, 4):
            path = ws.features_dir(name) / shard_name("extract", ids[first])
            with ShardWriter(path, attrs={"plan": "tsn"}) as writer:
                for i in range(first, first + 4):
                    grid = rng.normal(size=(FRAMES, *GRID))
                    grid[:, i % CLASSES :: CLASSES] += 1.0
                    writer.add(ids[i], 0, 0, {"grid": grid.astype(np.float16)})
            rows += writer.rows
        write_index(ws.features_dir(name), rows)
    pd.DataFrame(
        {"video_id": ids, "label": [i % CLASSES for i in range(VIDEOS)],
         "label_name": [f"c{i % CLASSES}" for i in range(VIDEOS)],
         "split": ["test" if i >= VIDEOS - TEST else "train" for i in range(VIDEOS)], "status": "ok"}
    ).to_parquet(ws.manifest_path)  # fmt: skip
    return ws


SPEC = [HeadInput("rgb", (STREAMS[0],), "grid"), HeadInput("flow", (STREAMS[1],), "grid")]


@pytest.fixture
def shard_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every clip row read from a shard, in order."""
    reads: list[int] = []
    original = FeatureSet._read

    def read(self: FeatureSet, position: int, layer: str) -> np.ndarray:
        reads.append(position)
        return original(self, position, layer)

    monkeypatch.setattr(FeatureSet, "_read", read)
    return reads


def test_an_epoch_reads_each_batch_when_it_is_needed_and_no_earlier(ws, shard_reads):
    ids = [f"v{i:03d}" for i in range(VIDEOS)]
    with InputReader(ws, SPEC, cache_bytes=0) as reader:
        batches = 0
        for batch in loader(reader, ids, None, batch_size=BATCH, train=True):
            batches += 1
            assert batch.inputs["rgb"].shape == (len(batch), FRAMES, *GRID)
            assert len(shard_reads) == len(STREAMS) * min(batches * BATCH, VIDEOS), "rows read ahead of the batch"
    assert batches == VIDEOS // BATCH


@pytest.mark.parametrize("cached_videos", [0, 6])
def test_an_epochs_arrays_are_a_batch_plus_the_cache_bound_not_the_dataset(ws, cached_videos):
    ids = [f"v{i:03d}" for i in range(VIDEOS)]
    bound = cached_videos * len(STREAMS) * VIDEO_BYTES
    dataset = VIDEOS * len(STREAMS) * VIDEO_BYTES
    # A batch's items as float32 (twice the stored bytes), plus one video's rows read as float16.
    batch = BATCH * len(STREAMS) * VIDEO_BYTES * 2 + len(STREAMS) * VIDEO_BYTES
    with InputReader(ws, SPEC, cache_bytes=bound) as reader:
        tracemalloc.start()
        try:
            for epoch in range(2):
                for _ in loader(reader, ids, None, batch_size=BATCH, train=True, seed=epoch):
                    pass
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert reader._cached <= bound
    assert dataset > 2 * (bound + 1.5 * batch), "the dataset must dwarf what streaming holds for this test to bite"
    assert peak <= bound + 1.5 * batch, f"peak {peak} B of arrays against a bound of {bound} + a batch of {batch}"


def test_training_a_map_head_rereads_what_its_cache_cannot_hold(ws, shard_reads, monkeypatch):
    bound = 6 * len(STREAMS) * VIDEO_BYTES
    most = []
    read = InputReader.read

    def reader_read(self: InputReader, video_id: str, view: int) -> dict[str, np.ndarray]:
        out = read(self, video_id, view)
        most.append(self._cached)
        return out

    monkeypatch.setattr(InputReader, "read", reader_read)
    torch.set_num_threads(1)
    config = TrainConfig(
        features=STREAMS, head="vcm-sdd", head_options={"frames": 6, "dim": 8, "heads": 2, "relation_dim": 4},
        batch_size=BATCH, max_epochs=2, patience=2, lr=1e-3, device="cpu",
    )  # fmt: skip
    result = train(ws, config, run_id="streamed", cache_bytes=bound)
    fit = len(json.loads((result.directory / "config.json").read_text())["data"]["train"])
    assert max(most) <= bound
    # Two epochs over the fit videos, each of which mostly misses the 6-video cache.
    assert len(shard_reads) >= len(STREAMS) * 2 * (fit - 6)
