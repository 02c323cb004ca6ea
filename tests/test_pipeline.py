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
from vpipe.pipeline.journal import Journal, Record
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


def test_journal_flushes_by_record_count_and_loads_only_new_parts(tmp_path, monkeypatch):
    from vpipe.pipeline import journal as journal_module
    from vpipe.pipeline.journal import Record

    journal = Journal(tmp_path / "j", flush_every=3, flush_seconds=1e9)
    for n in range(7):
        journal.append(Record(f"k{n}", "fp", True, [{"n": n}]))
    assert len(journal.parts()) == 2, "7 records at 3 per flush: two parts, one record pending"
    reads = []
    real = journal_module._read_part
    monkeypatch.setattr(journal_module, "_read_part", lambda part: reads.append(part.name) or real(part))
    journal_module._loaded.clear()
    assert len(Journal(tmp_path / "j").load()) == 6
    assert len(reads) == 2
    journal.flush()
    assert len(reads) == 2, "a flush by this process feeds the loaded records directly"
    other = Journal(tmp_path / "j")
    other.append(Record("k0", "fp2", False, error="late"))
    other.flush()
    journal_module._loaded.clear()
    Journal(tmp_path / "j").load()
    reads.clear()
    Journal(tmp_path / "j", flush_every=1).append(Record("k9", "fp", True))
    records = Journal(tmp_path / "j").load()
    assert len(reads) == 0, "the part this process wrote is not read back"
    assert (len(records), records["k0"].fingerprint, records["k0"].error) == (8, "fp2", "late")
    assert records["k6"].rows == [{"n": 6}]


def test_a_resumed_run_merges_the_parts_of_a_killed_one(ws):
    from vpipe.pipeline.journal import Record

    stage = SquareStage(ws, range(6))
    run_stage(stage, InProcessExecutor(), progress=False)
    journal = Journal(stage.journal_dir, flush_every=1)
    done = journal.load()
    for key in ("v0001", "v0002", "v0003"):
        journal.append(Record(**{**done[key].__dict__, "seconds": 9.0}))
    assert len(journal.parts()) == 4
    report = run_stage(SquareStage(ws, range(6)), InProcessExecutor(), progress=False)
    assert report.computed == 0
    assert len(journal.parts()) == 1
    merged = Journal(stage.journal_dir).load()
    assert len(merged) == 6 and merged["v0002"].seconds == 9.0, "the latest record of a key wins"


def test_dask_executor_keeps_a_bounded_window_and_packs_cheap_items():
    """The driver holds a few tasks per worker thread, however many items there are."""
    from functools import partial

    from distributed import LocalCluster

    from tests.toy_stage import square
    from vpipe.pipeline.executor import TASKS_PER_THREAD, WorkItem

    cluster = LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None)
    executor = DaskExecutor(scheduler=cluster.scheduler_address)
    submitted = []
    try:
        real_submit = executor.client.submit

        def counting_submit(fn, fn_arg, payloads, *args, **kwargs):
            submitted.append(len(payloads))
            return real_submit(fn, fn_arg, payloads, *args, **kwargs)

        executor.client.submit = counting_submit
        items = [WorkItem(f"k{i:04d}", "fp", i) for i in range(400)]
        held, values = [], []
        for outcome in executor.map(partial(square, 0.0, frozenset({7}), None), items, stage="square"):
            held.append(len(executor.client.futures))
            values.append(outcome.rows[0]["square"] if outcome.ok else None)
    finally:
        executor.close()
        cluster.close()
    assert sorted(v for v in values if v is not None) == sorted(i * i for i in range(400) if i != 7)
    assert values.count(None) == 1, "a failure stays per item inside a packed task"
    assert max(held) <= TASKS_PER_THREAD * 2 + 1, "the window, plus the finished task being read"
    assert submitted == [25] * 16, "400 cheap items over 2 threads: 25 per task, 16 tasks"


def test_records_read_back_parse_their_rows_only_when_used(tmp_path) -> None:
    from vpipe.pipeline import journal as journal_module

    written = [Record(f"k{n}", "fp", n % 2 == 0, [{"n": n, "shard": f"s{n}.h5"}], path=f"/v{n}") for n in range(4)]
    journal = Journal(tmp_path / "j", flush_every=2)
    for record in written:
        journal.append(record)
    journal.flush()
    journal_module._loaded.clear()  # read the parts back from disk, as another process would
    loaded = Journal(tmp_path / "j").load()
    assert all("_rows" not in vars(r) or vars(r)["_rows"] is None for r in loaded.values())
    assert [loaded[r.key] for r in written] == written and written[1] == loaded["k1"]
    assert loaded["k3"].rows == [{"n": 3, "shard": "s3.h5"}]
    Journal(tmp_path / "j").compact(loaded)  # rewrites the text as read, parsed or not
    journal_module._loaded.clear()
    assert Journal(tmp_path / "j").load() == {r.key: r for r in written}


def test_a_status_snapshot_stats_each_file_once(tmp_path) -> None:
    from vpipe.pipeline.fingerprint import file_fingerprint, one_stat_per_file

    video = tmp_path / "v.mp4"
    video.write_bytes(b"a")
    with one_stat_per_file():
        first = file_fingerprint(video)
        video.write_bytes(b"longer")
        assert file_fingerprint(str(video)) == first  # the snapshot's view
    assert file_fingerprint(video) != first  # outside it, every call stats
