"""A stage over plain numbers, to test the engine without videos.

Kept importable as a module (not inside a test file) so dask workers and killed
subprocesses can unpickle its item function.
"""

from __future__ import annotations

import json
import sys
import time
from functools import partial
from pathlib import Path

from vpipe.errors import DecodeError
from vpipe.pipeline.executor import ItemFn, WorkItem
from vpipe.pipeline.fingerprint import fingerprint
from vpipe.pipeline.journal import Record
from vpipe.pipeline.stage import Stage
from vpipe.artifacts import atomic_write_text
from vpipe.pipeline.workspace import DatasetWorkspace


def square(delay: float, bad: frozenset[int], calls_dir: str | None, value: int) -> list[dict]:
    if calls_dir:
        Path(calls_dir, f"{value}-{time.time_ns()}").touch()
    time.sleep(delay)
    if value in bad:
        raise DecodeError(f"cannot decode item {value}")
    return [{"value": value, "square": value * value}]


class SquareStage(Stage):
    name = "square"

    def __init__(self, workspace, values, *, salt="", delay=0.0, bad=(), calls_dir=None):
        super().__init__(workspace)
        self.values, self.salt, self.delay, self.bad, self.calls_dir = values, salt, delay, frozenset(bad), calls_dir

    @property
    def artifact(self) -> Path:
        return self.workspace.dir / "squares.json"

    def items(self) -> list[WorkItem]:
        return [WorkItem(f"v{v:04d}", fingerprint(self.salt, v), v, path=f"/videos/{v}.avi") for v in self.values]

    def item_fn(self) -> ItemFn:
        return partial(square, self.delay, self.bad, self.calls_dir)

    def write_artifact(self, items, records: dict[str, Record], fingerprint: str) -> None:
        rows = sorted((row for r in records.values() if r.ok for row in r.rows), key=lambda row: row["value"])
        atomic_write_text(self.artifact, json.dumps(rows))


if __name__ == "__main__":
    from vpipe.pipeline.executor import make_executor
    from vpipe.pipeline.runner import run_stage

    root, count, delay, workers = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
    workspace = DatasetWorkspace(Path(root), "toy")
    executor = make_executor(workers=workers)
    try:
        report = run_stage(SquareStage(workspace, range(count), delay=delay), executor, progress=False)
    finally:
        executor.close()
    print(json.dumps(report.to_dict()))
