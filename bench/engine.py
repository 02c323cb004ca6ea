"""Engine overhead at Kinetics scale: per-item cost and driver memory of a no-op stage.

The toy stage of the tests (``tests/toy_stage.py``, squaring numbers, no sleep)
runs through ``run_stage`` with N items, in-process and on a local dask cluster,
so what is measured is the engine alone: listing items, resuming, submitting,
journaling, writing the artifact. A sampler thread records the driver's resident
memory; its growth over the baseline is what the driver holds per item. Then a
rerun with nothing to do is timed, as is one journal load.

    python bench/engine.py --items 10000 100000 1000000 --workers 2 --out bench/results/engine.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model, load_average
from tests.toy_stage import SquareStage
from vpipe.pipeline.executor import make_executor
from vpipe.pipeline.journal import Journal
from vpipe.pipeline.runner import run_stage
from vpipe.pipeline.workspace import DatasetWorkspace


class PeakRss:
    """Samples this process's RSS every 20 ms; ``peak - base`` is what a run added."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.base = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def measure(count: int, workers: int, root: Path) -> dict:
    """One first run and one rerun of ``count`` items; ``workers == 0`` is in-process."""
    workspace = DatasetWorkspace(root / f"{count}-{workers}", "toy")
    executor = make_executor(workers=workers)
    try:
        if workers:
            executor.client.scheduler_info()  # start the cluster outside the timing
        memory = PeakRss()
        memory.start()
        start = time.perf_counter()
        report = run_stage(SquareStage(workspace, range(count)), executor, progress=False)
        seconds = time.perf_counter() - start
        memory.stop()
    finally:
        executor.close()
    assert report.done == count and report.computed == count, report
    start = time.perf_counter()
    rerun = run_stage(SquareStage(workspace, range(count)), make_executor(workers=0), progress=False)
    rerun_seconds = time.perf_counter() - start
    assert rerun.computed == 0
    journal_dir = workspace.state_dir / "square"
    start = time.perf_counter()
    Journal(journal_dir).load()
    cached_load = time.perf_counter() - start
    row = {
        "items": count,
        "executor": f"dask, {workers} local workers" if workers else "in-process",
        "seconds": round(seconds, 2),
        "us_per_item": round(1e6 * seconds / count, 1),
        "driver_rss_base_mb": round(memory.base / 2**20, 1),
        "driver_rss_growth_mb": round((memory.peak - memory.base) / 2**20, 1),
        "bytes_per_item": round((memory.peak - memory.base) / count, 1),
        "rerun_seconds": round(rerun_seconds, 2),
        "journal_parts": len(Journal(journal_dir).parts()),
        "journal_cached_load_seconds": round(cached_load, 3),
    }
    shutil.rmtree(workspace.dir, ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--workers", type=int, default=2, help="Local dask workers of the dask runs; 0 skips them.")
    parser.add_argument("--out", type=Path, default=Path("bench/results/engine.json"))
    args = parser.parse_args()
    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for count in args.items:
            for workers in sorted({0, args.workers}):
                rows.append(measure(count, workers, Path(tmp)) | {"load_average": load_average()})
                print(json.dumps(rows[-1]), flush=True)
                result = {
                    "machine": {"cpu": cpu_model(), "cores": psutil.cpu_count(), "python": platform.python_version()},
                    "rows": rows,
                }
                args.out.write_text(json.dumps(result, indent=2))
    print("| items | executor | µs/item | driver RSS growth | bytes/item | rerun | journal parts |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['items']:,} | {r['executor']} | {r['us_per_item']} | {r['driver_rss_growth_mb']} MB | "
            f"{r['bytes_per_item']} | {r['rerun_seconds']} s | {r['journal_parts']} |"
        )


if __name__ == "__main__":
    main()
