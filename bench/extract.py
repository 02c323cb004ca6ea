"""Benchmark: is feature extraction limited by decoding, by the model, or by neither?

For each backbone, three rates in clips per second, measured in one run on one machine:

* ``decode``: the planned clips of generated videos decoded, resized and cropped
  exactly as the extract stage does (``crop_rgb_clips`` over ``VideoJob`` s, through
  ``prefetched`` with ``--decode-workers`` loader processes, 0: in this process);
* ``model``: the same clips, already decoded to uint8 and held in memory, through
  ``run_model`` in batches of ``--batch-size`` (one warm-up batch excluded; on CUDA
  the device is synchronised before the clock is read);
* ``e2e``: ``extract_videos``, the extract stage's item function, writing real HDF5
  shards into a temporary folder, one call per ``--videos-per-task`` videos as the
  stage's runner hands them out.

``limit`` is min(decode, model): what a pipeline that overlaps decoding with compute
perfectly would reach. ``eff`` = e2e / limit; the target is 0.9 or better. On a CPU-only
machine decoding and the model share the same cores, so ``serial`` = 1 / (1/decode +
1/model), the rate with no overlap at all, is printed too.

The jobs come from a real plan: ``--videos`` MPEG-4 AVIs (160x120, 64 frames) are
written into a folder-layout dataset in a temporary workspace, then probed and planned
with the ``li3d`` sampler (``--clip-len`` frames, ``--size`` crops) by the product's own
stages. ``--plan backbone`` instead plans each backbone with its own default plan (its
paper's: VideoMAE 5 clips of 16 frames at step 4 on 224² crops, CLIP 8 uniform frames,
…), so each family runs at its default input; ``--plan-option KEY=VALUE`` adjusts those
plans where their sampler takes KEY (``clips=2`` shortens a run of the ViT-L V-JEPA).
Frame backbones (resnet50, clip) see every frame of a clip as one image. Models keep
their random initialisation: speed does not depend on the weights.

``peak_rss_mib`` is the process's peak resident memory while one backbone was measured
(Linux: the high-water mark is reset before each backbone through ``/proc/self/clear_refs``;
elsewhere it is the process's peak so far), decoding workers not included. Disk per
clip is ``shard_bytes / clips``, every cached layer at float16.

Each phase runs ``--repeats`` times, the phases interleaved, and the best rate of each
counts (every sample is kept in the JSON). The report (``--out``) also records thread
settings, the machine and the load average before and after the run: on a shared
machine, rates measured under load are lower and noisier.

    python bench/extract.py [--backbones li3d i3d resnet50] [--videos 8] [--decode-workers 1]
    python bench/extract.py --backbones videomae --plan backbone --videos 1 --decode-workers 0
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import platform
import resource
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from vpipe.device import resolve_device
from vpipe.extract.features import ExtractConfig, extract_videos, load_model, run_model
from vpipe.extract.inputs import LoadedClip, crop_rgb_clips
from vpipe.video.jobs import VideoJob, jobs_from_plan
from vpipe.video.prefetch import prefetched
from vpipe.pipeline.executor import InProcessExecutor
from vpipe.pipeline.runner import run_stage
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.dataset import configure_dataset
from vpipe.stages.plan import PlanStage
from vpipe.stages.probe import ProbeStage
from vpipe.catalog import backbone_plan
from vpipe.video.plan import SAMPLER_PARAMS, SHARED_PARAMS, SamplerConfig, sampler_config
from vpipe.video.write import write_video
from machine import cpu_model, load_average  # bench/machine.py, beside this script

DEFAULT_BACKBONES = ("li3d", "i3d", "resnet50")
WIDTH, HEIGHT, FRAMES = 160, 120, 64
CLASSES = 2
DECODER = "auto"


@dataclass
class Timing:
    clips: int
    seconds: float
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.clips / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Result:
    backbone: str
    input_kind: str
    clips: int
    decode_clips_per_s: float
    model_clips_per_s: float
    e2e_clips_per_s: float
    limit_clips_per_s: float
    serial_clips_per_s: float
    efficiency: float
    bound_by: str
    decode_seconds: float
    decode_first_item_seconds: float
    model_seconds: float
    e2e_seconds: float
    decode_cpu_seconds: float
    model_cpu_seconds: float
    e2e_cpu_seconds: float
    e2e_tasks: int
    shard_bytes: int
    peak_rss_mib: float
    plan: dict[str, Any]
    #: every repeat's rate, in run order; the fields above hold the best of them.
    samples: dict[str, list[float]]


# --------------------------------------------------------------------------- inputs


def make_frames(seed: int) -> list[np.ndarray]:
    """A smooth random texture panning across the frame, with light noise (a realistic bitrate)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (HEIGHT // 8 + 12, WIDTH // 8 + 12, 3), dtype=np.uint8)
    texture = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)
    frames = []
    for i in range(FRAMES):
        dy = int(40 + 30 * math.sin(i / 9))
        dx = int(45 + 40 * math.cos(i / 13))
        frame = texture[dy : dy + HEIGHT, dx : dx + WIDTH].astype(np.int16)
        frame += rng.integers(-6, 7, frame.shape, dtype=np.int16)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return frames


def probe_videos(tmp: Path, videos: int) -> tuple[DatasetWorkspace, dict[str, Any]]:
    """Write videos into a folder dataset and probe it."""
    root = tmp / "videos"
    started = time.perf_counter()
    for number in range(videos):
        write_video(root / f"class{number % CLASSES}" / f"video{number:03d}.avi", make_frames(number), codec="mpeg4")
    encode_seconds = time.perf_counter() - started
    workspace = DatasetWorkspace(tmp / "workspace", "bench")
    config = configure_dataset(workspace, adapter="folder", root=root)
    started = time.perf_counter()
    run_stage(ProbeStage(workspace, config), InProcessExecutor(), progress=False)
    info = {
        "videos": videos,
        "video_size": f"{WIDTH}x{HEIGHT}",
        "frames_per_video": FRAMES,
        "codec": "mpeg4 (AVI)",
        "encode_seconds": round(encode_seconds, 2),
        "probe_seconds": round(time.perf_counter() - started, 2),
    }
    return workspace, info


def bench_sampler(backbone: str, args: argparse.Namespace) -> tuple[str, SamplerConfig]:
    """The plan name and sampler a backbone is timed with: li3d at ``--clip-len`` and
    ``--size``, or (``--plan backbone``) its own default plan with ``--plan-option`` s."""
    if args.plan == "li3d":
        short_side = max(args.size, 2 * math.ceil(args.size * 128 / 112 / 2))
        return "li3d", sampler_config("li3d", need=args.clip_len, size=args.size, short_side=short_side)
    default = backbone_plan(backbone)
    allowed = (*SAMPLER_PARAMS[default.sampler], *SHARED_PARAMS)
    overrides = {k: v for k, v in args.plan_option.items() if k in allowed}
    return default.name, sampler_config(default.sampler, **{**default.options, **overrides})


def plan_jobs(workspace: DatasetWorkspace, name: str, sampler: SamplerConfig) -> list[VideoJob]:
    """Plan the probed videos with ``sampler`` under ``name`` and return the plan's jobs."""
    run_stage(PlanStage(workspace, sampler, plan_name=name), InProcessExecutor(), progress=False)
    plan = pd.read_parquet(workspace.plan_path(name))
    return list(jobs_from_plan(plan, workspace.read_manifest()).values())


def reset_peak_rss() -> bool:
    """Reset this process's resident-memory high-water mark (Linux ≥ 4.0); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mib() -> float:
    """This process's peak resident memory since the last reset (VmHWM), else since it started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


# --------------------------------------------------------------------------- timing


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (loader processes, once joined)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(fn: Callable[[], int]) -> Timing:
    start_wall, start_cpu = time.perf_counter(), cpu_seconds()
    clips = fn()
    return Timing(clips, time.perf_counter() - start_wall, cpu_seconds() - start_cpu)


def time_decode(jobs: list[VideoJob], workers: int) -> tuple[Timing, float, list[LoadedClip]]:
    """Decode and crop every planned clip; also the wait for the first video (worker start-up).

    The clips are kept for the model-only pass.
    """
    kept: list[LoadedClip] = []
    first: list[float] = []

    def run() -> int:
        start = time.perf_counter()
        # The extract stage's loading of rgb clips (see ``extract_videos``).
        for index, loaded in prefetched(functools.partial(crop_rgb_clips, decoder=DECODER), jobs, workers):
            if not first:
                first.append(time.perf_counter() - start)
            if isinstance(loaded, Exception):
                raise RuntimeError(f"decoding {jobs[index].path} failed: {loaded}") from loaded
            kept.extend(loaded)
        return len(kept)

    timing = timed(run)
    return timing, first[0], kept


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_batches(clips: list[LoadedClip], batch_size: int) -> list[list[LoadedClip]]:
    """The batches ``extract_videos`` forms: full ones in order, then the remainder."""
    return [clips[i : i + batch_size] for i in range(0, len(clips), batch_size)]


def warm_up(model: torch.nn.Module, batches: list[list[LoadedClip]], device: torch.device) -> None:
    """One forward per batch shape (the odd-sized last batch too), untimed."""
    for batch in {len(b): b for b in batches}.values():
        run_model(model, batch, device)
    synchronize(device)


def time_model(model: torch.nn.Module, batches: list[list[LoadedClip]], device: torch.device) -> Timing:
    """``run_model`` over in-memory uint8 clips, batch after batch."""
    with torch.inference_mode():
        synchronize(device)

        def run() -> int:
            for batch in batches:
                run_model(model, batch, device)
            synchronize(device)
            return sum(len(batch) for batch in batches)

        return timed(run)


def time_end_to_end(config: ExtractConfig, jobs: list[VideoJob], videos_per_task: int) -> tuple[Timing, int]:
    """``extract_videos`` per task of ``videos_per_task`` videos (0: all in one task)."""
    size = videos_per_task or len(jobs)
    tasks = [jobs[i : i + size] for i in range(0, len(jobs), size)]

    def run() -> int:
        rows = 0
        for task in tasks:
            for job, outcome in zip(task, extract_videos(config, task)):
                if isinstance(outcome, Exception):
                    raise RuntimeError(f"extracting {job.video_id} failed: {outcome}") from outcome
                rows += len(outcome)
        return rows

    timing = timed(run)
    return timing, len(tasks)


def benchmark(backbone: str, workspace: DatasetWorkspace, args: argparse.Namespace, tmp: Path) -> Result:
    """Time the three phases ``--repeats`` times, interleaved, and keep each phase's best.

    Interleaving exposes every phase to the same background load; the best of several
    runs is the least disturbed by other work on a shared machine.
    """
    plan_name, sampler = bench_sampler(backbone, args)
    jobs = plan_jobs(workspace, plan_name, sampler)
    reset_peak_rss()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: irrelevant to speed
        model = load_model(backbone, "rgb", None, (), args.device)
    device = next(model.parameters()).device
    out_dir = tmp / "features" / backbone
    config = ExtractConfig(
        backbone=backbone,
        stream="rgb",
        out_dir=str(out_dir),
        device=args.device,
        batch_size=args.batch_size,
        decode_workers=args.decode_workers,
        decoder=DECODER,
        provenance={"benchmark": "extract"},
    )
    decodes: list[Timing] = []
    first_items: list[float] = []
    models: list[Timing] = []
    e2es: list[Timing] = []
    tasks = 0
    for repeat in range(args.repeats):
        decode, first_item, clips = time_decode(jobs, args.decode_workers)
        decodes.append(decode)
        first_items.append(first_item)
        batches = model_batches(clips, args.batch_size)
        if repeat == 0:
            warm_up(model, batches, device)
        models.append(time_model(model, batches, device))
        del clips, batches
        e2e, tasks = time_end_to_end(config, jobs, args.videos_per_task)
        if e2e.clips != decode.clips:
            raise RuntimeError(f"{backbone}: end-to-end wrote {e2e.clips} clips, the plan has {decode.clips}")
        e2es.append(e2e)
    shard_bytes = sum(path.stat().st_size for path in out_dir.glob("*") if path.is_file())
    decode, model_timing, e2e = (max(runs, key=lambda t: t.rate) for runs in (decodes, models, e2es))
    limit = min(decode.rate, model_timing.rate)
    return Result(
        backbone=backbone,
        input_kind=model.spec.input_kind,
        clips=decode.clips,
        decode_clips_per_s=round(decode.rate, 4),
        model_clips_per_s=round(model_timing.rate, 4),
        e2e_clips_per_s=round(e2e.rate, 4),
        limit_clips_per_s=round(limit, 4),
        serial_clips_per_s=round(1 / (1 / decode.rate + 1 / model_timing.rate), 4),
        efficiency=round(e2e.rate / limit, 3),
        bound_by="decode" if decode.rate < model_timing.rate else "model",
        decode_seconds=round(decode.seconds, 3),
        decode_first_item_seconds=round(min(first_items), 3),
        model_seconds=round(model_timing.seconds, 3),
        e2e_seconds=round(e2e.seconds, 3),
        decode_cpu_seconds=round(decode.cpu_seconds, 3),
        model_cpu_seconds=round(model_timing.cpu_seconds, 3),
        e2e_cpu_seconds=round(e2e.cpu_seconds, 3),
        e2e_tasks=tasks,
        shard_bytes=shard_bytes,
        peak_rss_mib=peak_rss_mib(),
        plan={"plan": plan_name, **sampler.params()},
        samples={
            "decode_clips_per_s": [round(t.rate, 4) for t in decodes],
            "model_clips_per_s": [round(t.rate, 4) for t in models],
            "e2e_clips_per_s": [round(t.rate, 4) for t in e2es],
        },
    )


# --------------------------------------------------------------------------- report


def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = cpu_model()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "cpu_model": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda_available": torch.cuda.is_available(),
        "gpu": gpu,
    }


def thread_info() -> dict[str, Any]:
    return {
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "env": {
            name: os.environ[name]
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
            if name in os.environ
        },
    }


def print_table(results: list[Result], header: dict[str, Any]) -> None:
    print(
        f"device {header['device']}, torch threads {header['threads']}, decode workers {header['workers']}, "
        f"batch {header['batch']}, best of {header['repeats']}, videos/task {header['per_task'] or 'all'}, "
        f"load avg {header['load_start']} -> {header['load_end']} (1 min, {header['cpus']} cpus)"
    )
    line = (
        f"{'backbone':9} {'clips':>5} {'decode/s':>9} {'model/s':>8} {'e2e/s':>7} "
        f"{'limit/s':>8} {'serial/s':>8} {'eff':>6} {'bound':>6} {'peak MiB':>9} {'KiB/clip':>9}"
    )
    print(line)
    print("-" * len(line))
    for r in results:
        print(
            f"{r.backbone:9} {r.clips:5d} {r.decode_clips_per_s:9.2f} {r.model_clips_per_s:8.3f} "
            f"{r.e2e_clips_per_s:7.3f} {r.limit_clips_per_s:8.3f} {r.serial_clips_per_s:8.3f} "
            f"{r.efficiency:6.2f} {r.bound_by:>6} {r.peak_rss_mib:9.0f} {r.shard_bytes / r.clips / 1024:9.1f}"
        )
    busiest = max(header["load_start"], header["load_end"])
    if header["cpus"] and busiest > header["cpus"]:
        print(
            f"note: load average {busiest} on {header['cpus']} cpus: other work shared the machine, "
            "so rates (and eff) are noisy; compare runs only at similar load"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(DEFAULT_BACKBONES), help="backbones to time")
    parser.add_argument("--clip-len", type=int, default=16, help="frames per planned clip")
    parser.add_argument("--size", type=int, default=112, help="crop size (square)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per forward pass")
    parser.add_argument("--decode-workers", type=int, default=1, help="loader processes decoding ahead (0: in this process, the stage's CPU default)")
    parser.add_argument(
        "--videos-per-task", type=int, default=8, help="videos per extract_videos call (stage default 8; 0: one call)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each phase; the best counts")
    parser.add_argument("--videos", type=int, default=8, help="videos to generate")
    parser.add_argument(
        "--plan", choices=("li3d", "backbone"), default="li3d",
        help="li3d at --clip-len/--size for every backbone, or each backbone's own default plan",
    )  # fmt: skip
    parser.add_argument(
        "--plan-option", action="append", default=[], metavar="KEY=VALUE",
        help="with --plan backbone: override a plan parameter where the plan's sampler takes it",
    )  # fmt: skip
    default_out = Path(__file__).parent / "results" / "extract.json"
    parser.add_argument("--out", type=Path, default=default_out, help="JSON report path")
    args = parser.parse_args()
    args.plan_option = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.plan_option)}
    logging.getLogger("vpipe").setLevel(logging.ERROR)  # the random-weights warning, once per backbone
    device = resolve_device(args.device)
    load_start = load_average()
    started = time.perf_counter()
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="vpipe-bench-extract-") as name:
        tmp = Path(name)
        workspace, inputs = probe_videos(tmp, args.videos)
        for backbone in args.backbones:
            results.append(benchmark(backbone, workspace, args, tmp))
            print(f"  {backbone}: done ({time.perf_counter() - started:.0f} s)", flush=True)
    load_end = load_average()
    report = {
        "benchmark": "extract",
        "machine": machine_info(device),
        "threads": thread_info(),
        "load_average": {
            "start": load_start,
            "end": load_end,
            "note": "1, 5 and 15 minute load averages; above the cpu count, other work shared the cores",
        },
        "config": {
            "device": str(device),
            "batch_size": args.batch_size,
            "decode_workers": args.decode_workers,
            "videos_per_task": args.videos_per_task,
            "repeats": args.repeats,
            "rates": "best of the repeats, per phase (see results[].samples)",
            "plan": args.plan,
            "plan_options": args.plan_option,
            "clip_len": args.clip_len if args.plan == "li3d" else None,
            "size": args.size if args.plan == "li3d" else None,
            "decoder": DECODER,
            "inputs": inputs,
        },
        "seconds": round(time.perf_counter() - started, 1),
        "results": [asdict(result) for result in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(
        results,
        {
            "device": device,
            "threads": torch.get_num_threads(),
            "workers": args.decode_workers,
            "batch": args.batch_size,
            "per_task": args.videos_per_task,
            "repeats": args.repeats,
            "load_start": load_start[0],
            "load_end": load_end[0],
            "cpus": os.cpu_count(),
        },
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
