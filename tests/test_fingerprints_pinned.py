"""Fingerprints of the probe, flow and extract stages, pinned to their values.

A fingerprint decides whether a cache is current, so an unchanged configuration must
keep its value across refactors: a changed value makes every existing workspace stale
(a silent full recompute). These values were taken before the stages' records became
typed; a deliberate change of what a stage computes bumps its format number instead,
and then these pins are updated with it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vpipe.data.base import VideoEntry
from vpipe.pipeline.fingerprint import canonical_json
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.extract import ExtractStage, clip_signature
from vpipe.stages.flow import FlowStage
from vpipe.stages.probe import ProbeStage
from vpipe.video.jobs import ClipSpec, VideoJob
from vpipe.video.views import Crop

JOB = VideoJob("v0", "/data/v0.avi", 40, (ClipSpec(0, 0, tuple(range(0, 32, 2)), Crop(128, 170, 8, 29, 112, 112, False)),))


@pytest.fixture
def fixed_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """One planned video whose file has a fixed size and time, and a fixed plan table."""
    signatures = {"v0": canonical_json(clip_signature(JOB))}
    for module in ("vpipe.stages.extract", "vpipe.stages.flow"):
        monkeypatch.setattr(f"{module}.plan_jobs", lambda workspace, plan: {"v0": JOB})
        monkeypatch.setattr(f"{module}.plan_signatures", lambda workspace, plan: signatures)
    for module in ("vpipe.stages.extract", "vpipe.stages.flow", "vpipe.stages.probe"):
        monkeypatch.setattr(f"{module}.file_fingerprint", lambda path: "size-1000-mtime-1")


def _only(stage) -> str:
    (item,) = stage.items()
    return item.fingerprint


def test_extract_fingerprints_are_pinned(tmp_path: Path, fixed_inputs) -> None:
    ws = DatasetWorkspace(tmp_path, "d")
    assert ExtractStage(ws, backbone="li3d", device="cpu").model_fingerprint() == "d42a73c5ebc1c9ad"
    assert ExtractStage(ws, backbone="vgg16", options={"grid": 14}, device="cpu").model_fingerprint() == "355258a57e91082a"
    assert _only(ExtractStage(ws, backbone="li3d", device="cpu")) == "14d3e30ae5d3bf3b"


def test_flow_fingerprint_is_pinned(tmp_path: Path, fixed_inputs) -> None:
    ws = DatasetWorkspace(tmp_path, "d")
    assert _only(FlowStage(ws, device="cpu")) == "6a048d718d42886a"
    assert _only(FlowStage(ws, device="cpu", stack=5, bound=15.0, tvl1_params={"warps": 3})) == "ebc60b0a070763a4"


def test_probe_fingerprint_is_pinned(tmp_path: Path, fixed_inputs, monkeypatch: pytest.MonkeyPatch) -> None:
    stage = ProbeStage(DatasetWorkspace(tmp_path, "d"), None)
    monkeypatch.setattr(ProbeStage, "entries", [VideoEntry("v0", Path("/data/v0.avi"), 0, "a", "train")])
    assert _only(stage) == "97669e5cb8e24bdd"
