"""The columnar classification agrees with the record-by-record reading of a journal."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from vpipe.pipeline.item_state import NEW, STALE, FAILED, DONE, classify, latest_records, stage_item_states
from vpipe.pipeline.journal import Journal, Record


def reference_state(key: str, expected: str, records: dict[str, Record]) -> int:
    """The per-item rule the runner has always applied, written out independently."""
    record = records.get(key)
    if record is None:
        return NEW
    if record.fingerprint != expected:
        return STALE
    return DONE if record.ok else FAILED


def test_each_state_on_a_hand_built_journal(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j")
    journal.append(Record("a", "fa", True))
    journal.append(Record("b", "old", True))
    journal.append(Record("c", "fc", False, error="bad"))
    journal.flush()
    journal.append(Record("b", "fb", True))  # a later part wins
    journal.append(Record("d", "fd", True))
    journal.flush()
    journal.append(Record("d", "fd", False, error="later failure"))
    journal.flush()
    states = stage_item_states(["a", "b", "c", "d", "e", "a2"], ["fa", "fb", "fc", "fd", "fe", "x"], tmp_path / "j")
    assert states.state.tolist() == [DONE, DONE, FAILED, FAILED, NEW, NEW]
    assert states.counts() == {"new": 2, "stale": 0, "failed": 2, "done": 2}
    stale = stage_item_states(["a", "b"], ["changed", "fb"], tmp_path / "j")
    assert stale.keys_in("stale") == ["a"] and stale.keys_in("done") == ["b"]


def test_empty_and_missing_journal(tmp_path: Path) -> None:
    states = stage_item_states(["a", "b"], ["x", "y"], tmp_path / "absent")
    assert states.counts() == {"new": 2, "stale": 0, "failed": 0, "done": 0}
    assert stage_item_states([], [], tmp_path / "absent").counts()["new"] == 0
    with pytest.raises(ValueError, match="2 keys but 1"):
        classify(["a", "b"], ["x"], latest_records(tmp_path / "absent"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_journals_match_the_per_item_rule(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    journal = Journal(tmp_path / "j", flush_every=10**9)
    keys = [f"v{i:04d}" for i in range(400)]
    for _part in range(rng.randint(1, 5)):
        for key in rng.sample(keys, rng.randint(1, 300)):
            journal.append(Record(key, f"fp{rng.randint(0, 2)}", rng.random() < 0.8))
        journal.flush()
    asked = rng.sample(keys + [f"new{i}" for i in range(50)], 300)
    expected = [f"fp{rng.randint(0, 2)}" for _ in asked]
    records = Journal(tmp_path / "j").load()
    states = stage_item_states(asked, expected, tmp_path / "j")
    assert states.state.tolist() == [reference_state(k, e, records) for k, e in zip(asked, expected)]


def test_stage_status_equals_the_per_item_reading_before_and_after_a_stale_change(tmp_path: Path) -> None:
    """``stage_status`` (columns) reports what the record-by-record rule gives, on a finished
    stage with failures and after a change that makes part of it stale."""
    from tests.toy_stage import SquareStage
    from vpipe.pipeline.executor import InProcessExecutor
    from vpipe.pipeline.runner import run_stage, stage_status, valid_records
    from vpipe.pipeline.workspace import DatasetWorkspace

    ws = DatasetWorkspace(tmp_path, "toy")
    run_stage(SquareStage(ws, range(60), bad={3, 7}), InProcessExecutor(), progress=False)

    def reference(stage: SquareStage) -> tuple[int, int, int]:
        current = valid_records(stage.items(), Journal(stage.journal_dir).load())
        failed = sum(not r.ok for r in current.values())
        return len(stage.items()), len(current) - failed, failed

    finished = SquareStage(ws, range(60), bad={3, 7})
    report = stage_status(finished)
    assert (report.total, report.done, report.failed) == reference(finished) == (60, 58, 2)
    changed = SquareStage(ws, range(40, 90), salt="new", bad={3, 7})  # stale 40..59, new 60..89
    report = stage_status(changed)
    assert (report.total, report.done, report.failed) == reference(changed) == (50, 0, 0)
    partly = SquareStage(ws, range(50), bad={3, 7})
    assert (stage_status(partly).done, stage_status(partly).failed) == reference(partly)[1:] == (48, 2)
