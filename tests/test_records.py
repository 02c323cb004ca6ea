"""Configurations rebuilt from the provenance their stages record, in one place."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from vpipe.extract.features import ExtractConfig
from vpipe.flow.compute import FlowConfig
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.extract import ExtractStage
from vpipe.stages.flow import FlowStage


def _same(a, b, *, skip: set[str]) -> None:
    for f in fields(a):
        if f.name not in skip:
            assert getattr(a, f.name) == getattr(b, f.name), f.name


def test_flow_config_round_trips_through_its_provenance(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("vpipe.stages.flow.table_fingerprint", lambda path: "plan")
    stage = FlowStage(DatasetWorkspace(tmp_path, "d"), stack=5, bound=15.0, tvl1_params={"warps": 3})
    written = stage.item_fn().args[0]
    rebuilt = FlowConfig.from_provenance(written.provenance, written.out_dir, written.device)
    _same(written, rebuilt, skip={"pairs_per_batch", "provenance"})
    assert FlowConfig.from_provenance({}, "x").bound == FlowConfig(out_dir="x").bound


def test_extract_config_round_trips_with_resolved_options(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("vpipe.stages.extract.table_fingerprint", lambda path: "plan")
    monkeypatch.setattr("vpipe.stages.extract.table_metadata", lambda path, key: "")
    stage = ExtractStage(DatasetWorkspace(tmp_path, "d"), backbone="vgg16", options={"grid": [7, 7]})
    written = stage.config()
    rebuilt = ExtractConfig.from_provenance(
        written.provenance, written.out_dir, weights=written.weights, inputs=written.inputs, device=written.device
    )
    _same(written, rebuilt, skip={"options", "provenance", "batch_size", "decode_workers"})
    assert dict(rebuilt.options) == {"grid": [7, 7], "flow_stack": 4}, "the resolved options, defaults included"
