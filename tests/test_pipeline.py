"""The stage engine: resume, staleness, failures, interruption, dask execution."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.toy_stage import SquareStage
from vpipe.pipeline.executor import DaskExecutor, InProcessExecutor
from vpipe.pipeline.journal import Journal
from vpipe.pipeline.runner import run_stage, stage_status
from vpipe.pipeline.workspace import DatasetWorkspace

HERE = Path(__file__).parent


@pytest.fixture
def ws(tmp_path: Path) -> DatasetWorkspace:
    return DatasetWorkspace(tmp_path, "toy")


def squares(stage: SquareStage) -> list[int]:
    return [row["square"] for row in json.loads(stage.artifact.read_text())]


def test_first_run_computes_everything_second_run_nothing(ws):
    stage = SquareStage(ws, range(10))
    first = run_stage(stage, InProcessExecutor(), progress=False)
    assert (first.total, first.done, first.failed, first.computed) == (10, 10, 0, 10)
    assert squares(stage) == [v * v for v in range(10)]
    mtime = stage.artifact.stat().st_mtime_ns
    second = run_stage(SquareStage(ws, range(10)), InProcessExecutor(), progress=False)
    assert (second.computed, second.up_to_date, second.done) == (0, 10, 10)
    assert "nothing to do" in second.summary()
    assert stage.artifact.stat().st_mtime_ns == mtime, "an up-to-date artifact must not be rewritten"


def test_only_new_and_stale_items_are_recomputed(ws, tmp_path):
    run_stage(SquareStage(ws, range(6)), InProcessExecutor(), progress=False)
    calls = tmp_path / "calls"
    calls.mkdir()
    grown = SquareStage(ws, range(8), calls_dir=str(calls))
    report = run_stage(grown, InProcessExecutor(), progress=False)
    assert report.computed == 2
    assert sorted(int(p.name.split("-")[0]) for p in calls.iterdir()) == [6, 7]
    assert squares(grown) == [v * v for v in range(8)]
    salted = run_stage(SquareStage(ws, range(8), salt="new config"), InProcessExecutor(), progress=False)
    assert salted.computed == 8, "a configuration change makes every item stale"


def test_failed_items_are_recorded_and_do_not_stop_others(ws):
    stage = SquareStage(ws, range(5), bad={1, 3})
    report = run_stage(stage, InProcessExecutor(), progress=False)
    assert (report.done, report.failed) == (3, 2)
    assert squares(stage) == [0, 4, 16]
    failures = pd.read_parquet(ws.failures_path)
    assert sorted(failures["video_id"]) == ["v0001", "v0003"]
    assert set(failures["stage"]) == {"square"}
    assert failures.loc[failures.video_id == "v0001", "error"].item() == "cannot decode item 1"
    assert failures.loc[failures.video_id == "v0003", "path"].item() == "/videos/3.avi"
    again = run_stage(SquareStage(ws, range(5), bad={1, 3}), InProcessExecutor(), progress=False)
    assert again.computed == 0, "failed items are not retried unless their input changes"
    fixed = run_stage(SquareStage(ws, range(5)), InProcessExecutor(), progress=False, retry_failed=True)
    assert (fixed.computed, fixed.failed) == (2, 0)
    assert pd.read_parquet(ws.failures_path).empty


def test_interrupted_run_keeps_finished_items(ws):
    class Interrupting(InProcessExecutor):
        def map(self, fn, items, **kwargs):
            for n, outcome in enumerate(super().map(fn, items, **kwargs)):
                if n == 4:
                    raise KeyboardInterrupt
                yield outcome

    with pytest.raises(KeyboardInterrupt):
        run_stage(SquareStage(ws, range(10)), Interrupting(), progress=False)
    assert not SquareStage(ws, range(10)).artifact.exists()
    status = stage_status(SquareStage(ws, range(10)))
    assert (status.done, status.total) == (4, 10)
    resumed = run_stage(SquareStage(ws, range(10)), InProcessExecutor(), progress=False)
    assert (resumed.computed, resumed.done) == (6, 10)


@pytest.mark.slow
def test_killed_process_resumes_without_redoing_flushed_work(tmp_path):
    """SIGKILL the whole process group mid-run; the rerun does only the unflushed items.

    The journal flushes every 512 records, so what survives is a whole number of flushes.
    """
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    cmd = [sys.executable, "-m", "tests.toy_stage", str(tmp_path), "1100", "0.004", "0"]
    proc = subprocess.Popen(cmd, cwd=HERE.parent, env=env, start_new_session=True, stdout=subprocess.PIPE)
    journal = Journal(tmp_path / "toy" / ".state" / "square")
    deadline = time.time() + 30
    while time.time() < deadline and len(journal.load()) < 512:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kept = len(Journal(tmp_path / "toy" / ".state" / "square").load())
    assert kept in (512, 1024)
    out = subprocess.run(cmd, cwd=HERE.parent, env=env, capture_output=True, text=True, check=True)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["computed"] == 1100 - kept
    assert report["done"] == 1100
    leftovers = [p for p in (tmp_path / "toy").rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [], "temporary files must never outlive a run"
    assert len(journal.parts()) == 1, "a finished run leaves its journal as one part"


@pytest.mark.slow
def test_two_worker_local_dask_cluster_matches_in_process(ws, tmp_path):
    executor = DaskExecutor(workers=2)
    try:
        stage = SquareStage(ws, range(12), bad={5}, delay=0.05)
        report = run_stage(stage, executor, progress=False)
        workers = executor.client.scheduler_info()["workers"]
        assert len(workers) == 2
    finally:
        executor.close()
    assert (report.done, report.failed, report.computed) == (11, 1, 12)
    assert squares(stage) == [v * v for v in range(12) if v != 5]
    reference = DatasetWorkspace(tmp_path / "ref", "toy")
    run_stage(SquareStage(reference, range(12), bad={5}), InProcessExecutor(), progress=False)
    assert squares(SquareStage(reference, range(12))) == squares(stage)


def test_nothing_to_do_never_starts_a_cluster(ws):
    run_stage(SquareStage(ws, range(3)), InProcessExecutor(), progress=False)
    executor = DaskExecutor(workers=2)
    report = run_stage(SquareStage(ws, range(3)), executor, progress=False)
    assert report.computed == 0
    assert executor._client is None
