"""Extract model fingerprints, pinned to their values.

A fingerprint decides whether a cache is current, so an unchanged configuration must
keep its value across refactors: a changed value makes every existing workspace stale
(a silent full recompute). These values were taken before the stages' records became
typed; a deliberate change of what a stage computes bumps its format number instead,
and then these pins are updated with it. How item fingerprints are composed from
their parts is checked against the per-video reference in tests/test_fingerprint_columns.py.
"""

from __future__ import annotations

from pathlib import Path

from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.extract import ExtractStage


def test_extract_model_fingerprints_are_pinned(tmp_path: Path) -> None:
    ws = DatasetWorkspace(tmp_path, "d")
    assert ExtractStage(ws, backbone="li3d", device="cpu").model_fingerprint() == "d42a73c5ebc1c9ad"
    grid = ExtractStage(ws, backbone="vgg16", options={"grid": 14}, device="cpu").model_fingerprint()
    assert grid == "355258a57e91082a"
