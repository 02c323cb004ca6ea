"""GPU figures for issue-sized capacity planning, in one run that writes JSON.

Prepared for the first GPU machine; **not yet run on a GPU** (``--smoke`` runs it on
CPU at toy sizes, to check the script itself). Each figure is compared in the same
run against its goal or its peer, as ratios:

- ``tvl1``: pairs/s at 224² on one GPU, batches of 256 (shrinking batches, the
  default), against the goal of 300 pairs/s.
- ``extract``: li3d rgb clips/s through the extraction path (videos decoded by the
  loader processes ahead of the model) against the same model on batches already in
  memory (its limit); goal: efficiency >= 0.9.
- ``scaling``: flow pairs/s of G processes, each pinned to one GPU with
  ``CUDA_VISIBLE_DEVICES`` as ``vpipe run --gpus`` pins them, against G × one GPU;
  goal: near-linear (>= 0.9).
- ``kmeans``: faiss k-means (K=128, 1024-d, 100k points) on the GPU against the CPU,
  or why it could not run.

    python bench/gpu.py --out bench/results/gpu.json
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from flow import make_pairs  # noqa: E402

from vpipe.extract.features import load_model, run_model  # noqa: E402
from vpipe.extract.inputs import LoadedClip, crop_rgb_clips  # noqa: E402
from vpipe.flow import tvl1  # noqa: E402
from vpipe.video.jobs import ClipSpec, VideoJob  # noqa: E402
from vpipe.video.prefetch import default_loader_workers, prefetched  # noqa: E402
from vpipe.video.views import Crop  # noqa: E402
from vpipe.video.write import write_video  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def tvl1_rate(device: str, pairs: int, size: int, seconds: float) -> float:
    """Pairs/s over repeated batches for at least ``seconds`` (after one warm-up batch)."""
    prev_np, next_np = make_pairs(pairs, size, size)
    prev, nxt = torch.from_numpy(prev_np).to(device), torch.from_numpy(next_np).to(device)
    tvl1(prev, nxt)
    sync(device)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        tvl1(prev, nxt)
        sync(device)
        done += pairs
    return done / (time.perf_counter() - start)


def video_jobs(directory: Path, videos: int, frames: int, side: int) -> list[VideoJob]:
    """Synthetic MPEG-4 videos of ``frames`` frames, one centre clip of 16 frames each."""
    rng = np.random.default_rng(0)
    jobs = []
    for i in range(videos):
        path = directory / f"v{i}.avi"
        base = rng.integers(0, 255, (side + 8 * frames, side + 8 * frames, 3), dtype=np.uint8)
        write_video(path, (base[4 * t : 4 * t + side, 4 * t : 4 * t + side] for t in range(frames)))
        crop = Crop(resize_h=side, resize_w=side, y=0, x=0, h=side, w=side)
        spec = ClipSpec(clip=0, view=0, frames=tuple(range(0, frames, max(1, frames // 16)))[:16], crop=crop)
        jobs.append(VideoJob(f"v{i}", str(path), frames, (spec,)))
    return jobs


def extraction(device: str, videos: int, side: int, batch: int) -> dict:
    """Clips/s with decoding overlapped by loader processes, and the model-only limit."""
    model = load_model("li3d", "rgb", None, (), device)
    torch_device = torch.device(device)
    precision = "bf16" if torch_device.type == "cuda" else "fp32"
    with tempfile.TemporaryDirectory() as tmp:
        jobs = video_jobs(Path(tmp), videos, 48, side)
        clips = [c for job in jobs[:batch] for c in crop_rgb_clips(job, "auto")]
        run_model(model, clips[:batch], torch_device, precision)  # warm-up
        sync(device)
        start = time.perf_counter()
        for _ in range(max(1, videos // batch)):
            run_model(model, clips[:batch], torch_device, precision)
        sync(device)
        limit = max(1, videos // batch) * batch / (time.perf_counter() - start)

        workers = default_loader_workers(torch_device) or 2
        load = functools.partial(crop_rgb_clips, decoder="auto")
        pending: list[LoadedClip] = []
        list(prefetched(load, jobs[:workers], workers))  # loader processes started
        start, done = time.perf_counter(), 0
        for _, loaded in prefetched(load, jobs, workers):
            if isinstance(loaded, Exception):
                raise loaded
            pending.extend(loaded)
            while len(pending) >= batch:
                run_model(model, pending[:batch], torch_device, precision)
                pending, done = pending[batch:], done + batch
        sync(device)
        overlapped = done / (time.perf_counter() - start)
    return {"clips_per_s": overlapped, "limit_clips_per_s": limit, "efficiency": overlapped / limit,
            "loader_workers": workers, "goal_efficiency": 0.9}  # fmt: skip


def scaling(gpus: int, pairs: int, size: int, seconds: float, smoke: bool) -> dict:
    """Flow pairs/s of ``gpus`` pinned processes at once, against ``gpus`` × one alone."""

    def run(count: int) -> float:
        code = (
            "import sys, json; sys.path.insert(0, sys.argv[1]); from gpu import tvl1_rate; "
            "print(json.dumps(tvl1_rate(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))))"
        )
        device = "cpu" if smoke else "cuda"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", code, str(Path(__file__).parent), device, str(pairs), str(size), str(seconds)],
                env={**os.environ, "CUDA_VISIBLE_DEVICES": str(i), "OMP_NUM_THREADS": "1"},
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(count)
        ]
        return sum(float(p.communicate()[0].strip().splitlines()[-1]) for p in procs)

    one = run(1)
    together = run(gpus)
    return {"gpus": gpus, "one_gpu_pairs_per_s": one, "all_gpus_pairs_per_s": together,
            "efficiency": together / (gpus * one), "goal_efficiency": 0.9}  # fmt: skip


def kmeans(points: int, smoke: bool) -> dict:
    try:
        import faiss
    except ImportError as error:
        return {"skipped": f"faiss not importable: {error}"}
    data = np.random.default_rng(0).standard_normal((points, 1024)).astype(np.float32)
    timings = {}
    for use_gpu in (False, True):
        if use_gpu and (smoke or not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0):
            timings["gpu"] = None
            continue
        km = faiss.Kmeans(1024, 128, niter=10, seed=0, gpu=use_gpu)
        start = time.perf_counter()
        km.train(data)
        timings["gpu" if use_gpu else "cpu"] = time.perf_counter() - start
    speedup = timings["cpu"] / timings["gpu"] if timings.get("gpu") else None
    return {"points": points, "k": 128, "dim": 1024, "niter": 10, "seconds": timings, "gpu_speedup_vs_cpu": speedup}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes on CPU: checks the script, measures nothing")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu.json")
    args = parser.parse_args()
    smoke = args.smoke
    if not smoke and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs CUDA; --smoke checks the script on CPU")
    device = "cpu" if smoke else "cuda"
    gpus = 2 if smoke else torch.cuda.device_count()
    pairs, size, seconds = (4, 64, 0.5) if smoke else (256, 224, 20.0)

    rate = tvl1_rate(device, pairs, size, seconds)
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "device": "cpu (smoke)" if smoke else torch.cuda.get_device_name(),
            "gpus": gpus,
        },
        "smoke": smoke,
        "tvl1": {"size": size, "batch": pairs, "pairs_per_s": rate, "goal_pairs_per_s": 300, "vs_goal": rate / 300},
        "extract": extraction(device, 8 if smoke else 256, 64 if smoke else 224, 4 if smoke else 32),
        "scaling": scaling(gpus, pairs, size, seconds, smoke),
        "kmeans": kmeans(2_000 if smoke else 100_000, smoke),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
