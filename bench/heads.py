"""Training throughput and peak memory of a head on a UCF101-sized cache, cached vs streamed.

Builds a fabricated cache of UCF101's shape through the real store API (13,320 videos,
101 classes, the official-like 9,537 / 3,783 split, li3d rgb and flow, 8 steps × 1024
float16 per video), then trains ``bilstm-softagg`` for two epochs in a child process per
mode: ``cached`` (the default decoded-input cache, which holds this cache after the first
epoch) and ``streamed`` (cache off: every epoch reads every row from the shards). The
figure that matters is the second epoch's videos/s, and the peak RSS of each process;
the streamed path should stay within 1.5× of the cached one.

    python bench/heads.py [--videos 13320] [--head-options hidden=64,clusters=16]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from machine import cpu_model, load_average  # bench/machine.py, beside this script

STREAMS = ("li3d-rgb", "li3d-flow")
STEPS, DIM, CLASSES = 8, 1024, 101
VIDEOS_PER_SHARD = 128


def build_cache(root: Path, videos: int, seed: int = 0) -> None:
    """Write the manifest and both feature sets; class-dependent means so training learns."""
    from vpipe.pipeline.workspace import DatasetWorkspace
    from vpipe.store import ShardWriter, shard_name, write_index

    ws = DatasetWorkspace(root, "ucf-shaped")
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(CLASSES, DIM)).astype(np.float32)
    labels = np.arange(videos) % CLASSES
    split = np.where(rng.random(videos) < 3783 / 13320, "test", "train")
    ids = [f"v{i:06d}" for i in range(videos)]
    for name in STREAMS:
        rows = []
        for start in range(0, videos, VIDEOS_PER_SHARD):
            path = ws.features_dir(name) / shard_name("extract", ids[start])
            with ShardWriter(path, attrs={"backbone": "fabricated", "plan": "li3d"}) as writer:
                for i in range(start, min(start + VIDEOS_PER_SHARD, videos)):
                    steps = means[labels[i]] + rng.normal(scale=4.0, size=(STEPS, DIM)).astype(np.float32)
                    writer.add(ids[i], 0, 0, {"pool": steps.astype(np.float16)})
            rows += writer.rows
        write_index(ws.features_dir(name), rows)
    pd.DataFrame(
        {
            "video_id": ids,
            "label": labels,
            "label_name": [f"class{c:03d}" for c in labels],
            "split": split,
            "status": "ok",
        }
    ).to_parquet(ws.manifest_path)


def train_once(root: Path, mode: str, head_options: dict) -> dict:
    """One run in this process; returns epoch times and this process's peak RSS."""
    import torch

    from vpipe.pipeline.workspace import DatasetWorkspace
    from vpipe.train import TrainConfig, train

    torch.set_num_threads(1)
    ws = DatasetWorkspace(root, "ucf-shaped")
    config = TrainConfig(
        features=STREAMS, head_options=head_options, batch_size=64, max_epochs=2, patience=2, lr=1e-3
    )
    shutil.rmtree(ws.run_dir(f"bench-{mode}"), ignore_errors=True)
    started = time.perf_counter()
    result = train(ws, config, run_id=f"bench-{mode}", cache_bytes=0 if mode == "streamed" else 2 * 1024**3)
    history = result.history
    train_videos = len(json.loads((result.directory / "config.json").read_text())["data"]["train"])
    return {
        "mode": mode,
        "epoch_seconds": history["seconds"].round(2).tolist(),
        "videos_per_second_epoch2": round(train_videos / float(history["seconds"].iloc[-1]), 1),
        "train_videos": train_videos,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "test_accuracy": result.metrics["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=13_320)
    parser.add_argument("--root", type=Path, default=Path("/tmp/vpipe-bench-heads"))
    parser.add_argument("--head-options", default="hidden=64,clusters=16")
    parser.add_argument("--out", type=Path, default=Path("bench/results/heads.json"))
    parser.add_argument("--child", choices=("cached", "streamed"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = {k: int(v) for k, v in (pair.split("=") for pair in args.head_options.split(",") if pair)}
    if args.child:
        print(json.dumps(train_once(args.root, args.child, options)))
        return
    if not (args.root / "ucf-shaped" / "manifest.parquet").exists():
        started = time.perf_counter()
        build_cache(args.root, args.videos)
        print(f"built the cache in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    results = []
    for mode in ("cached", "streamed"):
        child = [sys.executable, __file__, "--child", mode, "--root", str(args.root), "--head-options", args.head_options]
        out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(results[-1], file=sys.stderr)
    ratio = results[0]["videos_per_second_epoch2"] / results[1]["videos_per_second_epoch2"]
    report = {
        "machine": {"cpu": cpu_model(), "load_average": load_average()},
        "videos": args.videos,
        "head": "bilstm-softagg",
        "head_options": options,
        "streams": list(STREAMS),
        "fusion": "late",
        "results": results,
        "streamed_slowdown": round(ratio, 2),
        "goal_streamed_slowdown_at_most": 1.5,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
