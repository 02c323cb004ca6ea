"""`vpipe status` and a nothing-to-do rerun on a Kinetics-400-sized workspace.

A folder dataset of ``--videos`` empty clip files (400 classes, Kinetics-400 is about
240k) is listed by the real adapter, and the main job's stages (probe, plan, flow, li3d
rgb and flow, ``hoghofmbh``) are brought up to date through the real engine
(:func:`vpipe.pipeline.runner.run_stage`: journals, artifacts, indexes), except that
the per-video work is replaced by :class:`FabricatedExecutor`, which returns rows of
the right shape at once: a 10 s 340×256 probe record, and one index row per planned
clip pointing at a shard that is never written. Plan runs for real. So the workspace
holds what a finished extraction of that size holds, minus the HDF5 payload, which
``status`` never opens.

Then ``vpipe status`` (a fresh process, as a user runs it, imports included) and the
engine's nothing-to-do pass over every per-video stage are timed. The goal is status
under 5 s at 240k videos.

    python bench/status.py --root /tmp/vpipe-status --videos 240000 --out bench/results/status.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model, load_average
from vpipe.pipeline.executor import Outcome, WorkItem
from vpipe.pipeline.runner import run_stage
from vpipe.pipeline.stage import WholeDatasetStage
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.main_job import ChainOptions, main_job
from vpipe.stages.dataset import configure_dataset
from vpipe.video.jobs import VideoJob

DATASET = "k400like"
CLASSES = 400
#: What the probe of a Kinetics clip finds: 10 s at 25 fps, 340 × 256 (the usual resized copy).
PROBED = {"num_frames": 250, "fps": 25.0, "width": 340, "height": 256, "codec": "h264"}


def make_videos(directory: Path, videos: int) -> None:
    """``videos`` empty ``.mp4`` files spread over :data:`CLASSES` class folders."""
    for c in range(CLASSES):
        (directory / f"class{c:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(videos):
        (directory / f"class{i % CLASSES:03d}" / f"v{i:07d}.mp4").touch()


class FabricatedExecutor:
    """Returns, for every item, rows shaped like the real stage's, without decoding anything."""

    def map(
        self,
        fn: Callable,
        items: Sequence[WorkItem],
        *,
        stage: str,
        resources: dict[str, float] | None = None,
        chunk_size: int = 1,
        batched: bool = False,
    ) -> Iterator[Outcome]:
        for item in items:
            yield Outcome(item, self.rows(stage, item), "", 0.0)

    @staticmethod
    def rows(stage: str, item: WorkItem) -> list[dict[str, Any]]:
        if not isinstance(item.payload, VideoJob):
            return [dict(PROBED)]
        layer = "flow" if stage.startswith("flow") else "pool"
        shape = [16, 2, 112, 112] if layer == "flow" else [4, 1024]
        layers = json.dumps({layer: {"dataset": f"layers/{layer}", "shape": shape, "dtype": "float16"}})
        shard = f"shard-{abs(hash(item.key)) % 4096:012x}.h5"
        return [
            {"video_id": item.key, "clip": c.clip, "view": c.view, "shard": shard, "row": n, "layers": layers}
            for n, c in enumerate(item.payload.clips)
        ]

    def close(self) -> None:
        pass


def build(root: Path, videos: int) -> dict[str, float]:
    """The videos, the dataset config and every per-video stage brought up to date; seconds per stage."""
    source = root / "videos"
    if not source.exists():
        make_videos(source, videos)
    ws = DatasetWorkspace(root, DATASET)
    configure_dataset(ws, adapter="folder", root=source)
    seconds = {}
    for step in main_job(ws, ws.read_config(), ChainOptions()):
        if not isinstance(step, WholeDatasetStage):
            started = time.perf_counter()
            run_stage(step, FabricatedExecutor(), progress=False)
            seconds[step.label] = round(time.perf_counter() - started, 2)
            print(f"{step.label}: {seconds[step.label]} s", file=sys.stderr, flush=True)
    return seconds


def rerun(root: Path) -> dict[str, float]:
    """Every per-video stage again with nothing to do: the engine's resume path, per stage."""
    ws = DatasetWorkspace(root, DATASET)
    seconds = {}
    for step in main_job(ws, ws.read_config(), ChainOptions()):
        if not isinstance(step, WholeDatasetStage):
            started = time.perf_counter()
            report = run_stage(step, FabricatedExecutor(), progress=False)
            assert report.computed == 0, f"{step.label} recomputed {report.computed} items"
            seconds[step.label] = round(time.perf_counter() - started, 2)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/tmp/vpipe-status"))
    parser.add_argument("--videos", type=int, default=240_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "status.json")
    args = parser.parse_args()
    started = time.perf_counter()
    built = build(args.root, args.videos)
    build_seconds = time.perf_counter() - started
    vpipe = Path(sys.executable).with_name("vpipe")
    command = [str(vpipe), "status", "--dataset", DATASET, "--workspace", str(args.root), "--json"]
    times, output = [], ""
    for _ in range(args.repeats):
        started = time.perf_counter()
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        times.append(round(time.perf_counter() - started, 2))
    started = time.perf_counter()
    subprocess.run([str(vpipe), "--help"], check=True, capture_output=True)
    startup = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    per_stage = rerun(args.root)
    result = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": load_average()},
        "videos": args.videos,
        "build_seconds": round(build_seconds, 1),
        "build_seconds_per_stage": built,
        "status_seconds": times,
        "status_best_seconds": min(times),
        "cli_startup_seconds": startup,
        "rerun_nothing_to_do_seconds": round(time.perf_counter() - started, 2),
        "rerun_seconds_per_stage": per_stage,
        "status": json.loads(output),
        "goal_status_seconds": 5.0,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "status"}, indent=2))


if __name__ == "__main__":
    main()
