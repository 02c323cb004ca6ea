"""What the checksums cost where they are paid: writing shards in extract, reading them in training.

Two measurements, each running the checked and the unchecked variant alternately in
one process (``--repeats`` times each, the first of each pair swapped every repeat):

* **extract**: :func:`vpipe.extract.features.extract_videos` (li3d, rgb) over the planned
  clips of ``--videos`` generated MPEG-4 AVIs (probed and planned by the product's
  stages), writing real shards. Checked is the product as it is (every layer chunk with
  HDF5's Fletcher-32 filter, the shard's SHA-256 read back before the rename); unchecked
  writes the same shards without the filter and without the digest. Goal: ≤ 3 % of
  extract time.
* **training epoch**: :func:`vpipe.train.train` for one epoch of the default head on a
  fabricated UCF101-shaped cache of ``--train-videos`` videos (``bench/scale.py``), built
  twice from the same features: with Fletcher-32 chunks, as the product writes them, and
  without. One epoch from a cold start reads every clip once, the worst case: later
  epochs are served by the trainer's cache of decoded videos. Both variants keep the
  readers' finite-value check, which is a data check, not a checksum. Goal: ≤ 5 % of a
  cached-training epoch.

On a shared machine two runs of the same work differ by more than the checksums cost,
so each run also times the calls where the checksums are paid (``ShardWriter.add`` and
``close``; ``FeatureSet._read``, the one clip read): the overhead is the difference of
the medians of those parts, over the median total without checksums. The ratio of the
totals is reported beside it.

The unchecked variant exists only here: the bench turns the filter and the digest off
by patching the writer's two calls, so the product keeps a single write path.

    python bench/checksum_cost.py --repeats 3 --out bench/results/checksum_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench.machine import cpu_model, emit_result, load_average
from vpipe.artifacts import FileDigest
from vpipe.extract.features import ExtractConfig, extract_videos
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.store import FeatureSet, ShardWriter
from vpipe.video.jobs import VideoJob


@contextmanager
def unchecked() -> Iterator[None]:
    """Shards written as before checksums: no Fletcher-32 filter, no SHA-256 of the file."""
    import vpipe.store.shards as shards

    create = h5py.Group.create_dataset

    def without_filter(self: h5py.Group, name: str, *args: Any, **kwargs: Any) -> h5py.Dataset:
        kwargs.pop("fletcher32", None)
        return create(self, name, *args, **kwargs)

    digest = shards.file_digest
    h5py.Group.create_dataset = without_filter  # type: ignore[method-assign]
    shards.file_digest = lambda path: FileDigest(os.stat(path).st_size, "")  # type: ignore[assignment]
    try:
        yield
    finally:
        h5py.Group.create_dataset = create  # type: ignore[method-assign]
        shards.file_digest = digest  # type: ignore[assignment]


@contextmanager
def timed_calls(owner: type, names: tuple[str, ...], spent: list[float]) -> Iterator[None]:
    """Add the seconds spent inside ``owner``'s methods ``names`` to ``spent[0]``."""
    originals = {name: getattr(owner, name) for name in names}

    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                spent[0] += time.perf_counter() - started

        return timed

    for name, method in originals.items():
        setattr(owner, name, wrap(method))
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(owner, name, method)


def alternate(
    checked: Callable[[], float], plain: Callable[[], float], repeats: int, owner: type, names: tuple[str, ...]
) -> dict[str, Any]:
    """Run both variants ``repeats`` times, alternating which goes first.

    Each run reports its total time and the time spent inside ``owner.names`` (the
    shard writes, or the clip reads), where the checksums are paid. On a loaded machine
    the totals of two runs differ by more than the checksums cost, so the overhead is
    the difference of the medians of the timed part, relative to the median total
    without checksums; the ratio of the totals is reported too.
    """
    samples: dict[str, list[float]] = {"checked": [], "unchecked": []}
    parts: dict[str, list[float]] = {"checked": [], "unchecked": []}

    def once(variant: str) -> None:
        spent = [0.0]
        with timed_calls(owner, names, spent):
            if variant == "checked":
                total = checked()
            else:
                with unchecked():
                    total = plain()
        samples[variant].append(total)
        parts[variant].append(spent[0])

    for repeat in range(repeats):
        for variant in ("checked", "unchecked") if repeat % 2 == 0 else ("unchecked", "checked"):
            once(variant)
    median = {name: statistics.median(values) for name, values in samples.items()}
    part = {name: statistics.median(values) for name, values in parts.items()}
    return {
        "total_s": {name: round(v, 3) for name, v in median.items()},
        "timed_part": f"{owner.__name__}.{'/'.join(names)}",
        "timed_part_s": {name: round(v, 4) for name, v in part.items()},
        "checksum_s": round(part["checked"] - part["unchecked"], 4),
        "overhead": round((part["checked"] - part["unchecked"]) / median["unchecked"], 5),
        "ratio_of_totals": round(median["checked"] / median["unchecked"], 4),
        "samples_s": {name: [round(v, 3) for v in values] for name, values in samples.items()},
        "timed_part_samples_s": {name: [round(v, 4) for v in values] for name, values in parts.items()},
    }


def planned_jobs(tmp: Path, videos: int) -> list[VideoJob]:
    """``videos`` generated MPEG-4 AVIs (160x120, 64 frames, a panning texture), probed and
    planned by the product's stages with the li3d sampler at 16 frames and 112 px."""
    import numpy as np

    from vpipe.pipeline.executor import InProcessExecutor
    from vpipe.pipeline.runner import run_stage
    from vpipe.stages.dataset import configure_dataset
    from vpipe.stages.plan import PlanStage
    from vpipe.stages.probe import ProbeStage
    from vpipe.video.jobs import jobs_from_plan
    from vpipe.video.plan import sampler_config
    from vpipe.video.write import write_video

    for number in range(videos):
        texture = np.random.default_rng(number).integers(0, 256, (200, 260, 3), dtype=np.uint8)
        frames = [texture[i : i + 120, i : i + 160] for i in range(64)]
        write_video(tmp / "videos" / f"class{number % 2}" / f"video{number:03d}.avi", frames, codec="mpeg4")
    workspace = DatasetWorkspace(tmp / "workspace", "bench")
    config = configure_dataset(workspace, adapter="folder", root=tmp / "videos")
    run_stage(ProbeStage(workspace, config), InProcessExecutor(), progress=False)
    sampler = sampler_config("li3d", need=16, size=112, short_side=128)
    run_stage(PlanStage(workspace, sampler), InProcessExecutor(), progress=False)
    plan = pd.read_parquet(workspace.plan_path(sampler.name))
    return list(jobs_from_plan(plan, workspace.read_manifest()).values())


def extract_once(jobs: list[VideoJob], out_dir: Path, videos_per_task: int) -> float:
    shutil.rmtree(out_dir, ignore_errors=True)
    config = ExtractConfig(backbone="li3d", stream="rgb", out_dir=str(out_dir), device="cpu")
    started = time.perf_counter()
    for first in range(0, len(jobs), videos_per_task):
        task = jobs[first : first + videos_per_task]
        for job, outcome in zip(task, extract_videos(config, task)):
            if isinstance(outcome, Exception):
                raise RuntimeError(f"extracting {job.video_id} failed: {outcome}") from outcome
    return time.perf_counter() - started


def epoch_once(ws: DatasetWorkspace) -> float:
    """Seconds of the first (cold) epoch of the default head on ``ws``."""
    from bench.scale import FEATURES
    from vpipe.train import TrainConfig, train

    shutil.rmtree(ws.dir / "runs", ignore_errors=True)
    config = TrainConfig(features=(FEATURES,), max_epochs=1, patience=1, seed=0, device="cpu")
    result = train(ws, config, run_id="checksum-cost")
    return float(result.history["seconds"].iloc[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--videos", type=int, default=8, help="generated videos extracted")
    parser.add_argument("--videos-per-task", type=int, default=2)
    parser.add_argument("--train-videos", type=int, default=2000, help="videos of the fabricated training cache")
    parser.add_argument("--parts", nargs="+", default=["extract", "train"], choices=["extract", "train"])
    parser.add_argument("--root", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    result: dict[str, Any] = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "load_before": load_average()}}
    with tempfile.TemporaryDirectory(prefix="vpipe-checksum-", dir=args.root) as scratch:
        tmp = Path(scratch)
        if "extract" in args.parts:
            jobs = planned_jobs(tmp / "extract", args.videos)
            out_dir = tmp / "extract" / "features"
            once = lambda: extract_once(jobs, out_dir, args.videos_per_task)  # noqa: E731
            once()  # warm: model build, page cache
            result["extract"] = {
                "backbone": "li3d",
                "clips": sum(len(job.clips) for job in jobs),
                "videos": args.videos,
                **alternate(once, once, args.repeats, ShardWriter, ("add", "close")),
                "goal_overhead": 0.03,
            }
            print(json.dumps({"extract": result["extract"]}), file=sys.stderr, flush=True)
        if "train" in args.parts:
            from bench.scale import UCF101_TRAIN, UCF101_VIDEOS, build_ucf101_like_cache

            train = round(args.train_videos * UCF101_TRAIN / UCF101_VIDEOS)
            checked_ws = build_ucf101_like_cache(tmp / "checked", videos=args.train_videos, train=train)
            with unchecked():
                plain_ws = build_ucf101_like_cache(tmp / "plain", videos=args.train_videos, train=train)
            with h5py.File(next(plain_ws.features_dir("li3d-rgb").glob("shard-*.h5"))) as handle:
                assert not handle["layers/pool"].fletcher32, "the unchecked cache must have no checksums"
            epoch_once(checked_ws)  # warm: imports, page cache
            result["train_epoch"] = {
                "videos": args.train_videos,
                "head": "default",
                **alternate(lambda: epoch_once(checked_ws), lambda: epoch_once(plain_ws), args.repeats, FeatureSet, ("_read",)),
                "goal_overhead": 0.05,
            }
    result["machine"]["load_after"] = load_average()
    emit_result(result, args.out)


if __name__ == "__main__":
    main()
