"""A run's fingerprint computed for ``vpipe status`` (declarations and index columns, no
torch) equals the trainer's (registered head, open feature sets) for every head.

Status decides from this fingerprint whether the train and evaluate steps are current;
if the two drifted apart, status would call a finished run stale (or a stale one done)
while ``vpipe run`` did the opposite.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from vpipe.errors import ConfigError
from vpipe.head_specs import HEAD_SPECS
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.store import ShardWriter, shard_name, write_index
from vpipe.stages.main_job import pipeline_config
from vpipe.train import TrainConfig, current_run, existing_run, train
from vpipe.train.data import InputReader
from vpipe.train.identity import run_inputs, status_fingerprint
from vpipe.train.trainer import _inputs

RGB, FLOW = "any-rgb", "any-flow"
#: One small array per layer any built-in head reads; the fingerprint needs no real shapes.
LAYERS = ("pool", "conv5_3", "grid", "layer1", "layer2", "layer3", "layer4")


def make_workspace(root: Path, *, videos: int = 5, seed: int = 0) -> DatasetWorkspace:
    """Two feature sets with every head's layers; 3 classes, a test split, one video
    without flow features and one that failed its probe (both must stay out)."""
    rng = np.random.default_rng(seed)
    ws = DatasetWorkspace(root, "ids")
    rows: dict[str, list] = {RGB: [], FLOW: []}
    manifest = []
    for label in range(3):
        for i in range(videos):
            video_id = f"c{label}_{i}"
            split = "test" if i == videos - 1 else "train"
            for name in rows:
                if name == FLOW and video_id == "c0_0":
                    continue
                with ShardWriter(ws.features_dir(name) / shard_name("extract", video_id), attrs={"plan": "p"}) as writer:
                    for view in range(2 if split == "train" else 1):
                        writer.add(video_id, 0, view, {layer: rng.normal(size=(2, 3)) for layer in LAYERS})
                rows[name] += writer.rows
            manifest.append({"video_id": video_id, "label": label, "label_name": f"k{label}", "split": split, "status": "ok"})
    manifest.append({"video_id": "broken", "label": 1, "label_name": "k1", "split": "train", "status": "failed"})
    for name, name_rows in rows.items():
        write_index(ws.features_dir(name), name_rows)
    pd.DataFrame(manifest).to_parquet(ws.manifest_path)
    return ws


def _trainer_fingerprint(ws: DatasetWorkspace, config: TrainConfig) -> str:
    with InputReader(ws, run_inputs(config)) as reader:
        return _inputs(ws, config, reader).fingerprint


def _configs(tmp_path: Path) -> list[TrainConfig]:
    """Every head on its natural inputs, one-stream heads also late and early fused, and
    a head that reads an external file (its content enters the fingerprint)."""
    checkpoint = tmp_path / "vgg16.pth"
    checkpoint.write_bytes(b"not a real checkpoint, only hashed")
    configs = []
    for name, spec in HEAD_SPECS.items():
        if spec.streams == 2:
            configs.append(TrainConfig(features=(RGB, FLOW), head=name))
        else:
            configs += [TrainConfig(features=(RGB,), head=name), TrainConfig(features=(RGB, FLOW), head=name)]
    configs.append(TrainConfig(features=(RGB, FLOW), head="bilstm-softagg", fusion="early", seed=3, val_fraction=0.3))
    configs.append(TrainConfig(features=(RGB, FLOW), head="deep-fusion", head_options={"fc6_weights": str(checkpoint)}))
    return configs


def test_status_and_trainer_fingerprints_agree_for_every_head(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    configs = _configs(tmp_path)
    assert {c.head for c in configs} == set(HEAD_SPECS)
    fingerprints = [status_fingerprint(ws, config) for config in configs]
    assert fingerprints == [_trainer_fingerprint(ws, config) for config in configs]
    assert len(set(fingerprints)) == len(configs)


def test_an_option_added_later_keeps_earlier_runs_current(tmp_path):
    """``segments`` and ``spectrum`` came after runs were trained: at their defaults (the
    whole video, no spectrum, as before) they stay out of the identity, so those runs are
    not retrained; another value is a different run."""
    ws = make_workspace(tmp_path / "ws")
    default = TrainConfig(features=(RGB,), head="bilstm-softagg")
    named = TrainConfig(features=(RGB,), head="bilstm-softagg", head_options={"segments": 1})
    split = TrainConfig(features=(RGB,), head="bilstm-softagg", head_options={"segments": 2})
    before = {k: v for k, v in default.head_options.items() if k not in ("segments", "spectrum")}
    assert default.head_options["segments"] == 1
    assert default.identity() == {**default.to_dict(), "head_options": before}
    assert status_fingerprint(ws, named) == status_fingerprint(ws, default) == _trainer_fingerprint(ws, default)
    assert split.identity()["head_options"]["segments"] == 2
    spectral = TrainConfig(features=(RGB,), head="bilstm-softagg", head_options={"spectrum": 8})
    assert spectral.identity()["head_options"]["spectrum"] == 8
    assert status_fingerprint(ws, spectral) != status_fingerprint(ws, default)
    assert status_fingerprint(ws, split) != status_fingerprint(ws, default)
    assert status_fingerprint(ws, split) == _trainer_fingerprint(ws, split)


def test_a_changed_index_changes_the_status_fingerprint(tmp_path):
    """The per-process index cache is keyed by the file's state, not its name."""
    ws = make_workspace(tmp_path / "ws")
    config = TrainConfig(features=(RGB,), head="bilstm-softagg")
    before = status_fingerprint(ws, config)
    frame = pd.read_parquet(ws.features_dir(RGB) / "index.parquet")
    write_index(ws.features_dir(RGB), frame[frame["video_id"] != "c1_1"])
    after = status_fingerprint(ws, config)
    assert after != before
    assert after == _trainer_fingerprint(ws, config)


@pytest.mark.slow
def test_current_run_finds_the_run_train_reuses(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    config = pipeline_config(RGB, max_epochs=1, hidden=4, clusters=2)
    assert current_run(ws, config) is None
    result = train(ws, config, reuse=True, threads=1)
    assert current_run(ws, config).run_id == result.run_id == existing_run(ws, config).run_id


def test_index_columns_give_the_feature_set_s_numbers(tmp_path):
    """What encode's plan reads from the columns equals what it read from the open set."""
    from tests.fake_cache import make_workspace as make_sequences
    from vpipe.encode.fit import descriptor_dim, train_descriptor_total
    from vpipe.store.index_columns import index_columns

    ws = make_sequences(tmp_path / "seq")
    with ws.open_features("li3d-rgb") as features:
        columns = index_columns(features.directory)
        some = features.video_ids()[::3]
        assert columns.sha256 == features.index_sha256
        assert columns.layers == features.layers
        assert columns.view0_ids == set(features.index.loc[features.index["view"] == 0, "video_id"])
        assert columns.descriptor_dim("pool") == descriptor_dim(features, "pool")
        assert columns.descriptor_total(some, "pool") == train_descriptor_total(features, some, "pool") > 0
    with pytest.raises(ConfigError, match="no layer 'grid'"):
        columns.descriptor_total(some, "grid")
