"""Typed records of what crosses layers, and configurations rebuilt from them in one place."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import pandas as pd
import pytest

from vpipe.artifacts.provenance import FeatureProvenance, FlowProvenance
from vpipe.artifacts.records import DatasetConfig, RecordError
from vpipe.artifacts.rows import ManifestRow, PlanRow, columns, read_rows
from vpipe.extract.features import ExtractConfig
from vpipe.flow.compute import FlowConfig
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.dataset import configure_dataset
from vpipe.stages.extract import ExtractStage
from vpipe.stages.flow import FlowStage
from vpipe.video.plan import PLAN_SCHEMA

#: Provenance as the first extract stage wrote it, before resolved options, versions,
#: inputs and compute settings were recorded: such shards must keep loading.
FIRST_EXTRACT_PROVENANCE = {
    "backbone": "li3d", "stream": "rgb", "options": {"dropout": 0.5}, "weights": "random", "weights_sha256": "random",
    "plan": "li3d", "plan_fingerprint": "p", "sampler": {"name": "li3d"}, "decoder": "auto", "vpipe_version": "0.1.0",
}  # fmt: skip
FIRST_FLOW_PROVENANCE = {
    "method": "tvl1", "tvl1_params": {}, "stack": 0, "encoding": "uint8", "bound": 20.0, "plan": "li3d",
    "plan_fingerprint": "p", "decoder": "auto", "vpipe_version": "0.1.0",
}  # fmt: skip


def _same(a, b, *, skip: set[str]) -> None:
    for f in fields(a):
        if f.name not in skip:
            assert getattr(a, f.name) == getattr(b, f.name), f.name


def test_flow_config_round_trips_through_its_provenance(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("vpipe.stages.flow.table_fingerprint", lambda path: "plan")
    stage = FlowStage(DatasetWorkspace(tmp_path, "d"), stack=5, bound=15.0, tvl1_params={"warps": 3})
    written = stage.item_fn().args[0]
    recorded = FlowProvenance.from_dict(json.loads(json.dumps(written.provenance)), source="shard")
    rebuilt = FlowConfig.from_provenance(recorded, written.out_dir, written.device)
    _same(written, rebuilt, skip={"pairs_per_batch", "provenance"})
    assert recorded.to_dict() == written.provenance, "read and written again, the record is unchanged"


def test_extract_config_round_trips_with_resolved_options(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("vpipe.stages.extract.table_fingerprint", lambda path: "plan")
    monkeypatch.setattr("vpipe.stages.extract.table_metadata", lambda path, key: "")
    stage = ExtractStage(DatasetWorkspace(tmp_path, "d"), backbone="vgg16", options={"grid": [7, 7]})
    written = stage.config()
    recorded = FeatureProvenance.from_dict(json.loads(json.dumps(written.provenance)), source="shard")
    assert recorded.to_dict() == written.provenance
    rebuilt = ExtractConfig.from_provenance(
        recorded, written.out_dir, weights=written.weights, inputs=written.inputs, device=written.device
    )
    _same(written, rebuilt, skip={"options", "provenance", "batch_size", "decode_workers"})
    assert dict(rebuilt.options) == {"grid": [7, 7], "flow_stack": 4}, "the resolved options, defaults included"


def test_provenance_of_the_first_versions_still_loads_and_rebuilds_its_configs() -> None:
    features = FeatureProvenance.from_dict(FIRST_EXTRACT_PROVENANCE, source="old shard")
    assert features.clip_inputs == ("rgb",) and features.output_version == 1 and features.weights_file is None
    config = ExtractConfig.from_provenance(features, "out", weights=None, inputs=features.clip_inputs)
    assert dict(config.options) == {"dropout": 0.5}, "before resolved options, the typed ones"
    assert config.precision == ExtractConfig(backbone="li3d", stream="rgb", out_dir="out").precision
    assert features.to_dict() == FIRST_EXTRACT_PROVENANCE, "keys it never had are not added"
    flow = FlowProvenance.from_dict(FIRST_FLOW_PROVENANCE, source="old flow shard")
    assert FlowConfig.from_provenance(flow, "out").bound == 20.0
    nested = FeatureProvenance.from_dict({**FIRST_EXTRACT_PROVENANCE, "flow": FIRST_FLOW_PROVENANCE}, source="index")
    assert nested.flow == flow and nested.to_dict()["flow"] == FIRST_FLOW_PROVENANCE


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"backbone_name": "li3d"}, r"unknown keys \['backbone_name'\]"),
        ({"stream": None}, r"missing keys \['stream'\]"),
    ],
)
def test_a_changed_key_is_one_error_naming_the_source(change: dict, words: str) -> None:
    data = {k: v for k, v in {**FIRST_EXTRACT_PROVENANCE, **change}.items() if v is not None}
    with pytest.raises(RecordError, match=rf"^gallery\.parquet: FeatureProvenance has {words}"):
        FeatureProvenance.from_dict(data, source="gallery.parquet")
    bad_flow = {k: v for k, v in FIRST_FLOW_PROVENANCE.items() if k != "bound"}
    with pytest.raises(RecordError, match=r"index \(flow\): FlowProvenance has missing keys \['bound'\]"):
        FeatureProvenance.from_dict({**FIRST_EXTRACT_PROVENANCE, "flow": bad_flow}, source="index")


def test_dataset_config_reads_and_writes_dataset_json_byte_for_byte(tmp_path: Path) -> None:
    ws = DatasetWorkspace(tmp_path, "synthetic")
    config = configure_dataset(ws, generator_options={"videos_per_class": 3, "seed": None})
    assert config == DatasetConfig("synthetic", str(ws.dir / "source"), 1, {"videos_per_class": 3})
    # as vpipe has always written it: sorted keys, two-space indent
    expected = {"adapter": "synthetic", "root": str(ws.dir / "source"), "split": 1, "synthetic": {"videos_per_class": 3}}
    assert ws.config_path.read_text() == json.dumps(expected, indent=2, sort_keys=True)
    assert ws.read_config() == config
    folder = tmp_path / "videos"
    folder.mkdir()
    plain = configure_dataset(DatasetWorkspace(tmp_path, "mine"), adapter="folder", root=folder)
    assert "synthetic" not in json.loads(DatasetWorkspace(tmp_path, "mine").config_path.read_text())
    assert plain.root_path == folder.resolve() and plain.synthetic is None


def test_a_hand_edited_dataset_json_fails_naming_the_file(tmp_path: Path) -> None:
    ws = DatasetWorkspace(tmp_path, "d")
    ws.dir.mkdir(parents=True)
    ws.config_path.write_text(json.dumps({"adaptor": "folder", "root": "/x", "split": 1}))
    with pytest.raises(RecordError) as caught:
        ws.read_config()
    message = str(caught.value)
    assert message.startswith(str(ws.config_path)) and "unknown keys ['adaptor']" in message
    assert "missing keys ['adapter']" in message and "\n" not in message
    ws.config_path.write_text("{not json")
    with pytest.raises(RecordError, match="not valid JSON"):
        ws.read_config()


def test_manifest_rows_keep_the_probe_columns_and_fill_unprobed_ones(tmp_path: Path) -> None:
    assert columns(ManifestRow) == [
        "video_id", "path", "label", "label_name", "split",
        "num_frames", "fps", "width", "height", "codec", "status", "error",
    ]  # fmt: skip
    ws = DatasetWorkspace(tmp_path, "d")
    ws.dir.mkdir(parents=True)
    listed = pd.DataFrame({"video_id": ["a"], "label": [0], "label_name": ["x"], "split": ["train"], "status": ["ok"]})
    listed.to_parquet(ws.manifest_path)
    manifest = ws.read_manifest()
    assert list(manifest.columns) == columns(ManifestRow)
    assert manifest.loc[0, "num_frames"] == 0 and manifest.loc[0, "path"] == "", "what probe writes for an unread video"
    listed.rename(columns={"label": "class"}).to_parquet(ws.manifest_path)
    with pytest.raises(RecordError, match=r"manifest\.parquet: manifest table has unknown keys \['class'\] and "
                                          r"missing keys \['label'\].*vpipe probe --dataset d"):  # fmt: skip
        ws.read_manifest()


def test_plan_rows_are_the_plan_schema(tmp_path: Path) -> None:
    assert PLAN_SCHEMA.names == columns(PlanRow)
    assert str(PLAN_SCHEMA.field("frames").type) == "list<item: int32>" and str(PLAN_SCHEMA.field("flip").type) == "bool"
    path = tmp_path / "plan.parquet"
    pd.DataFrame({"video_id": ["a"], "clip": [0]}).to_parquet(path)
    with pytest.raises(RecordError, match=r"plan table has missing keys \['crop_h', .*'view'\]; .*: vpipe plan"):
        read_rows(path, PlanRow, fix="vpipe plan")
