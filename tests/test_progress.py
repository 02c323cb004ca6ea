"""Progress in batch-job logs: periodic lines with counts, rate and ETA; quiet means silent."""

from __future__ import annotations

import io
import re
import threading
import time

import pytest

from tests.toy_stage import SquareStage
from vpipe.pipeline import progress as progress_module
from vpipe.pipeline.executor import InProcessExecutor
from vpipe.pipeline.progress import Tracker, configure, format_duration, progress
from vpipe.pipeline.runner import run_stage
from vpipe.pipeline.workspace import DatasetWorkspace

LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d square: (\d+)/20 \([\d.]+%\), (\d+) failed, [\d.]+/(s|min), "
    r"elapsed \d+s, ETA (\d+s|\?)$"
)


@pytest.fixture(autouse=True)
def restore_defaults():
    saved = progress_module.defaults()
    yield
    configure(log_every=saved[0], quiet=saved[1])


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_and_eta_follow_the_counts():
    clock = FakeClock()
    tracker = Tracker("flow", 1000, clock=clock)
    assert tracker.eta is None, "no ETA before anything finished"
    clock.now += 50
    tracker.advance(100, failed=3)
    assert tracker.rate == pytest.approx(2.0)
    assert tracker.eta == pytest.approx(450.0)
    assert tracker.line() == "flow: 100/1000 (10.0%), 3 failed, 2.00/s, elapsed 50s, ETA 7m30s"
    assert tracker.summary() == "flow: finished 100/1000, 3 failed in 50s (2.00/s)"
    clock.now += 3550
    assert tracker.line().endswith("1.67/min, elapsed 1h00m, ETA 9h00m")


def test_slow_rates_read_per_minute_and_durations_stay_short():
    clock = FakeClock()
    tracker = Tracker("extract", 10, clock=clock)
    clock.now += 120
    tracker.advance()
    assert "0.50/min" in tracker.line()
    assert [format_duration(s) for s in (0, 59.6, 61, 3600 * 26 + 60)] == ["0s", "1m00s", "1m01s", "26h01m"]


def test_a_stage_in_a_log_file_writes_periodic_lines_and_a_summary(tmp_path, capsys):
    """What `vpipe run > log 2>&1` shows: a line every log_every seconds, then the total."""
    configure(log_every=0.25)
    stage = SquareStage(DatasetWorkspace(tmp_path, "toy"), range(20), bad={3}, delay=0.06)
    report = run_stage(stage, InProcessExecutor())
    captured = capsys.readouterr()
    assert captured.out == "", "progress never goes to stdout"
    lines = captured.err.splitlines()
    periodic = [LINE.match(line) for line in lines if "ETA" in line]
    assert len(periodic) >= 2, captured.err
    assert all(periodic), captured.err
    done = [int(m.group(1)) for m in periodic]
    assert done == sorted(done) and 0 < done[-1] <= 20
    assert any(m.group(4) != "?" for m in periodic), "an ETA once items finish"
    assert lines[-1].split(" ", 2)[2].startswith("square: finished 20/20, 1 failed in ")
    assert "square: v0003: cannot decode item 3" in captured.err
    assert report.failed == 1


def test_quiet_writes_no_progress_but_still_names_failures(tmp_path, capsys):
    configure(log_every=0.05, quiet=True)
    run_stage(SquareStage(DatasetWorkspace(tmp_path, "toy"), range(10), bad={2}, delay=0.02), InProcessExecutor())
    err = capsys.readouterr().err
    assert err.strip() == "square: v0002: cannot decode item 2"


def test_progress_false_silences_one_stage_whatever_the_defaults(tmp_path, capsys):
    configure(log_every=0.05)
    run_stage(SquareStage(DatasetWorkspace(tmp_path, "toy"), range(5), delay=0.02), InProcessExecutor(), progress=False)
    assert capsys.readouterr().err == ""


def test_heartbeat_while_a_single_item_takes_long():
    """A task longer than log_every must not look like a hung job."""
    out = io.StringIO()
    with progress("flow", 2, log_every=0.05, stream=out) as tracker:
        time.sleep(0.3)
        tracker.advance()
    lines = out.getvalue().splitlines()
    assert sum("flow: 0/2" in line for line in lines) >= 3
    assert "flow: finished 1/2" in lines[-1]


def test_an_interrupted_loop_says_it_stopped():
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt), progress("probe", 5, log_every=10, stream=out) as tracker:
        tracker.advance(2)
        raise KeyboardInterrupt
    assert "probe: stopped at 2/5, 0 failed" in out.getvalue()


def test_advance_is_thread_safe():
    tracker = Tracker("x", 40_000)

    def work() -> None:
        for _ in range(10_000):
            tracker.advance(failed=1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (tracker.done, tracker.failed) == (40_000, 40_000)


def test_a_terminal_gets_a_bar_and_no_log_lines():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    with progress("flow", 3, log_every=0.01, stream=out) as tracker:
        with progress("epoch", 2, stream=out) as inner:
            inner.advance(2)
        tracker.advance(3)
        time.sleep(0.05)
    assert "ETA" not in out.getvalue() and "finished" not in out.getvalue()
    assert progress_module._live is None, "the shared display is closed with its last tracker"


def test_configure_rejects_a_non_positive_interval():
    with pytest.raises(ValueError):
        configure(log_every=0)
