"""Input scaling of the ``bilstm-softagg`` head: per dimension, one shared scale for declared histograms.

A backbone declares which layers are normalised histograms, block by block, at its
registered version (``hoghofmbh``: HOG, HOF, MBHx, MBHy, colour); the training reader
turns that into one column range per feature set of a run's input (offset per
early-fused set), and the head scales each range by one shared spread, the root mean
square of its columns' standard deviations, written here once more with numpy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fake_cache import D, make_workspace
from vpipe.models.backbones import registry
from vpipe.models.backbones.hoghofmbh import DIM, HISTOGRAM_BLOCKS
from vpipe.models.heads import create_head
from vpipe.models.heads.bilstm import input_scales
from vpipe.models.heads.registry import HeadInput, PrepareData
from vpipe.train import TrainConfig, train
from vpipe.train.data import InputReader

FAKE_BLOCKS = (8, 24)
PROVENANCE = {"backbone": "fake", "backbone_version": 1}


def np_scales(sample: np.ndarray, ranges: list[tuple[int, int]]) -> np.ndarray:
    std = np.array([np.sqrt(np.mean((c - c.mean()) ** 2)) for c in sample.T])
    for start, stop in ranges:
        std[start:stop] = np.sqrt(np.mean(std[start:stop] ** 2))
    return np.maximum(std, max(np.median(std) * 1e-3, 1e-6))


@pytest.fixture
def fake_histograms(monkeypatch):
    """The fake cache's backbone declares its 32-wide ``pool`` as two histograms, 8 and 24 wide."""
    monkeypatch.setitem(registry._HISTOGRAMS, "fake", {"pool": FAKE_BLOCKS})


def test_input_scales_share_one_scale_per_block_and_keep_the_rest_per_dimension():
    rng = np.random.default_rng(0)
    sample = rng.normal(size=(200, 10)) * rng.uniform(0.1, 5.0, 10)
    sample[:, 9] = 3.0  # constant: floored, never a division by zero
    ranges = [(0, 4), (5, 8)]
    got = input_scales(sample.copy(), tuple(ranges))
    np.testing.assert_allclose(got, np_scales(sample, ranges), rtol=1e-12)
    assert len(set(got[0:4])) == 1 and len(set(got[5:8])) == 1 and got[9] > 0
    np.testing.assert_allclose(input_scales(sample.copy()), np_scales(sample, []), rtol=1e-12)


def test_hoghofmbh_declares_its_five_histograms_at_its_version_only():
    version = registry.backbone_version("hoghofmbh")
    assert HISTOGRAM_BLOCKS == (96, 108, 96, 96, 108) and sum(HISTOGRAM_BLOCKS) == DIM
    for layer in ("pool", "local"):
        assert registry.histogram_blocks("hoghofmbh", layer, version, DIM) == HISTOGRAM_BLOCKS
    assert registry.histogram_blocks("hoghofmbh", "pool", version - 1, DIM) == ()  # an older layout
    assert registry.histogram_blocks("hoghofmbh", "pool", version, 396) == ()
    assert registry.histogram_blocks("li3d", "pool", 1, 1024) == ()


def test_reader_offsets_blocks_of_early_fused_sets(tmp_path: Path, fake_histograms):
    ws = make_workspace(tmp_path, features=("li3d-rgb", "li3d-flow"), provenance=PROVENANCE)
    fused = HeadInput(role="x", features=("li3d-rgb", "li3d-flow"), layer="pool", layout="steps")
    with InputReader(ws, [fused]) as reader:
        assert reader.histogram_columns("x") == ((0, 32), (32, 64))
    plain = make_workspace(tmp_path / "plain")
    with InputReader(plain, [HeadInput(role="x", features=("li3d-rgb",), layer="pool", layout="steps")]) as reader:
        assert reader.histogram_columns("x") == ()


def test_head_prepare_uses_the_declared_blocks():
    rng = np.random.default_rng(1)
    sample = (rng.normal(size=(64, D)) * rng.uniform(0.1, 3.0, D)).astype(np.float32)
    head = create_head("bilstm-softagg", {"x": (D,)}, 4, hidden=8, aggregation="avg")
    ranges = ((0, 8), (8, 32))
    data = PrepareData(sample=lambda role, limit: sample, batches=lambda: iter(()), files={}, fit_videos=1, seed=0,
                       histogram_columns=lambda role: ranges)
    assert head.prepare(data) == {"input_scale": "one shared scale for histogram columns 0:8, 8:32"}
    np.testing.assert_allclose(head.model.input_std.numpy(), np_scales(sample.astype(np.float64), list(ranges)),
                               rtol=1e-5)
    np.testing.assert_allclose(head.model.input_mean.numpy(), sample.mean(0), rtol=1e-5, atol=1e-6)


def test_a_run_records_its_input_scale(tmp_path: Path, fake_histograms):
    torch.set_num_threads(1)
    config = TrainConfig(features="li3d-rgb", head_options={"hidden": 8, "aggregation": "avg"}, max_epochs=1,
                         batch_size=8)
    declared = train(make_workspace(tmp_path / "declared", provenance=PROVENANCE), config)
    plain = train(make_workspace(tmp_path / "plain"), config)
    read = (lambda r: json.loads((r.directory / "config.json").read_text())["prepared"]["input_scale"])
    assert read(declared) == "one shared scale for histogram columns 0:32" and read(plain) == "per dimension"
