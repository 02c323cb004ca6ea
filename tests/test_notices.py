"""Warnings raised in workers reach the run's log once, in the progress-line format."""

from __future__ import annotations

import os
import re
import warnings

import pytest

from vpipe.pipeline import notices
from vpipe.pipeline.executor import DaskExecutor, InProcessExecutor, WorkItem

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d WARNING (\S+): (.*)$")


class SlowToConverge(UserWarning):
    """Stands for a library's ConvergenceWarning."""


def warn_per_item(payload: int) -> list[dict]:
    """What a stage's item does in a worker: the same warnings, every item."""
    warnings.warn("backbone li3d-rgb has no weights: it is randomly initialised", stacklevel=1)
    warnings.warn(f"failed to converge after {100 + payload} iterations", SlowToConverge, stacklevel=1)
    return [{"item": payload, "pid": os.getpid()}]


def _lines(err: str) -> list[tuple[str, str]]:
    return [m.groups() for line in err.splitlines() if (m := LINE.match(line))]


@pytest.fixture
def configured(capsys):
    notices.configure()
    capsys.readouterr()
    yield
    notices.reset()


def test_recording_keeps_each_distinct_warning_once():
    with notices.recording() as raised:
        for _ in range(3):
            warnings.warn("same\n  text", stacklevel=1)
        warnings.warn("other", SlowToConverge, stacklevel=1)
    assert raised == [("UserWarning", "same text"), ("SlowToConverge", "other")]


@pytest.mark.parametrize("executor", ["in-process", "two workers"])
def test_worker_warnings_print_once_per_run(configured, capsys, executor):
    runner = InProcessExecutor() if executor == "in-process" else DaskExecutor(workers=2)
    items = [WorkItem(key=f"v{i}", fingerprint="f", payload=i) for i in range(8)]
    try:
        outcomes = list(runner.map(warn_per_item, items, stage="extract:li3d-rgb"))
    finally:
        runner.close()
    assert len(outcomes) == 8 and all(o.ok for o in outcomes)
    pids = {o.rows[0]["pid"] for o in outcomes}
    assert (pids == {os.getpid()}) if executor == "in-process" else (os.getpid() not in pids)
    notices.summarise()
    err = capsys.readouterr().err
    lines = _lines(err)
    no_weights = [text for stage, text in lines if "no weights" in text]
    converge = [(stage, text) for stage, text in lines if "failed to converge" in text]
    assert no_weights[0].startswith("backbone li3d-rgb has no weights")
    assert converge[0][0] == "extract:li3d-rgb"
    assert re.fullmatch(r"SlowToConverge: failed to converge after 10\d iterations", converge[0][1])
    # vpipe's own warning once; the library's once, then counted in the closing summary
    assert len(no_weights) == 1
    assert len(converge) == 2 and converge[1][1].endswith("iterations (8 times in all)")
    assert "warnings.warn" not in err and "UserWarning:" not in err


def test_driver_warnings_take_the_same_path(configured, capsys):
    warnings.warn("codebook sample is small", stacklevel=1)
    warnings.warn("codebook sample is small", stacklevel=1)
    assert [text for _, text in _lines(capsys.readouterr().err)] == ["codebook sample is small"]
