"""The ``deep-fusion`` head: parameters, CPU time per video, peak memory of a training epoch.

Three measurements (two-stream-deep-fusion-ln-lstm §3.6 sizes: T = 17 frames of
512 × 14 × 14 conv5_3 maps per stream, hidden 101, 101 classes):

- ``params``: parameters per block beside the sizes the paper states (the fusion filter
  3 × 3 × 3 × 1024 × 512, Fc6 on a 512-channel 7 × 7 pool5);
- ``speed``: forward time per test video (batch of one, eval mode) on native 14 × 14 maps
  and on the pooled 7 × 7 variant, beside the multiply-accumulates it takes (a figure
  that does not depend on how busy the machine is);
- ``rss``: peak resident memory of one training epoch run by ``vpipe.train.train`` over a
  fabricated cache of ``--videos`` videos of 14 × 14 maps in float16 shards, in a child
  process so that the figure is the epoch's alone (``--rss-head small`` keeps the input
  pipeline at full size but shrinks the head so the epoch fits a busy CPU; ``--rss-head
  full`` is the paper's head).

    python bench/deepfusion.py [--videos 303] [--rss-head small] [--out bench/results/deepfusion.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from vpipe.models.heads import create_head
from vpipe.models.heads.deepfusion import DeepFusion
from vpipe.models.heads.registry import HeadBatch

from machine import cpu_model, load_average  # bench/machine.py, beside this script

FRAMES, CHANNELS, CLASSES = 17, 512, 101
#: Head options of the memory runs: "small" keeps the cached inputs (what streaming must
#: bound) at full size and shrinks only what the head computes from them.
RSS_HEADS = {
    "full": {},
    "small": {"fusion_init": "random", "fused": 16, "fc6": 64, "hidden": 16},
}


def parameter_table() -> dict[str, int]:
    """Parameters per block of the head at the paper's sizes."""
    head = create_head("deep-fusion", dict(DeepFusion.example_shapes), CLASSES)
    blocks = {
        "fusion conv (eq. 2)": head.fusion,
        "Fc6": head.fc6,
        "LN-LSTM* over X_fc": head.fc_lstm,
        "LN-LSTM* over X_conv + region attention": head.conv_lstm,
        "W + LN-LSTM (eq. 11)": [head.merge, head.merge_lstm],
        "classifier": head.classifier,
    }
    table = {}
    for name, modules in blocks.items():
        modules = modules if isinstance(modules, list) else [modules]
        table[name] = sum(p.numel() for m in modules for p in m.parameters())
    table["total"] = sum(p.numel() for p in head.parameters())
    return table


@torch.inference_mode()
def ms_per_video(grid: int, videos: int) -> float:
    """Mean forward time of one video (T = 17, batch of one) on ``grid`` × ``grid`` maps."""
    head = create_head("deep-fusion", {"rgb": (CHANNELS, grid, grid), "flow": (CHANNELS, grid, grid)}, CLASSES).eval()
    x = torch.rand(1, FRAMES, CHANNELS, grid, grid)
    lengths = torch.tensor([FRAMES])
    batch = HeadBatch({"rgb": x, "flow": x.clone()}, {"rgb": lengths, "flow": lengths}, torch.zeros(1, dtype=torch.long))
    head(batch)
    start = time.perf_counter()
    for _ in range(videos):
        head(batch)
    return 1000 * (time.perf_counter() - start) / videos


def macs_per_video(grid: int) -> dict[str, float]:
    """Multiply-accumulates (GMAC) of one video's forward pass, per block, at the paper's sizes."""
    hidden, fused, cells = 101, 512, grid * grid
    lstm = lambda inputs: FRAMES * 4 * hidden * (inputs + hidden)
    blocks = {
        "fusion conv": FRAMES * cells * fused * 27 * 2 * CHANNELS,
        "Fc6": FRAMES * fused * 49 * 4096,
        "LSTMs + attention": lstm(4096) + lstm(fused) + lstm(hidden)
        + FRAMES * cells * (fused * hidden + hidden) + FRAMES * (2 * hidden) * hidden,
    }  # fmt: skip
    return {name: round(value / 1e9, 3) for name, value in {**blocks, "total": sum(blocks.values())}.items()}


def make_cache(root: Path, videos: int, grid: int = 14, per_shard: int = 25) -> None:
    """vgg16-rgb / vgg16-flow caches of ``videos`` videos: 6 per class (at most 101
    classes), a third of them test, so that every class keeps validation videos."""
    from vpipe.pipeline.workspace import DatasetWorkspace
    from vpipe.store import ShardWriter, shard_name, write_index

    rng = np.random.default_rng(0)
    ws = DatasetWorkspace(root, "bench")
    classes = max(2, min(CLASSES, videos // 6))
    ids = [f"v{i:05d}" for i in range(videos)]
    manifest = [
        {"video_id": v, "label": i % classes, "label_name": f"c{i % classes}",
         "split": "test" if (i // classes) % 3 == 2 else "train", "status": "ok"}
        for i, v in enumerate(ids)
    ]  # fmt: skip
    for name in ("vgg16-rgb", "vgg16-flow"):
        rows = []
        for start in range(0, videos, per_shard):
            chunk = ids[start : start + per_shard]
            with ShardWriter(ws.features_dir(name) / shard_name("extract", "\n".join(chunk)), attrs={"backbone": "vgg16"}) as writer:
                for video_id in chunk:
                    maps = np.maximum(rng.normal(size=(FRAMES, CHANNELS, grid, grid)), 0).astype(np.float16)
                    writer.add(video_id, 0, 0, {"conv5_3": maps})
            rows += writer.rows
        write_index(ws.features_dir(name), rows)
    pd.DataFrame(manifest).to_parquet(ws.manifest_path)


def train_one_epoch(root: Path, head: str, batch_size: int, threads: int) -> dict:
    """Child process: one epoch of ``vpipe.train.train``; peak RSS of this process."""
    from vpipe.pipeline.workspace import DatasetWorkspace
    from vpipe.train import TrainConfig, train

    config = TrainConfig(
        features=("vgg16-rgb", "vgg16-flow"), head="deep-fusion", head_options=RSS_HEADS[head],
        batch_size=batch_size, max_epochs=1, patience=1, lr=1e-5, device="cpu",
    )  # fmt: skip
    start = time.perf_counter()
    result = train(DatasetWorkspace(root, "bench"), config, run_id=f"rss-{head}", threads=threads)
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "test_videos": result.metrics["videos"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=303, help="videos in the fabricated cache of the rss run")
    parser.add_argument("--speed-videos", type=int, default=3)
    parser.add_argument("--rss-head", choices=sorted(RSS_HEADS), default="small")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip", nargs="*", default=[], choices=["params", "speed", "rss"])
    parser.add_argument("--out", type=Path, default=Path("bench/results/deepfusion.json"))
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(train_one_epoch(args.child, args.rss_head, args.batch_size, args.threads)))
        return

    result: dict = {"cpu": cpu_model(), "threads": args.threads, "load_average_before": load_average()}
    if "params" not in args.skip:
        result["parameters"] = parameter_table()
        print(json.dumps(result["parameters"], indent=2))
    if "speed" not in args.skip:
        result["ms_per_video"] = {f"{g}x{g}": round(ms_per_video(g, args.speed_videos), 1) for g in (14, 7)}
        result["gmac_per_video"] = {f"{g}x{g}": macs_per_video(g) for g in (14, 7)}
        print("ms per video:", result["ms_per_video"], "GMAC per video:", result["gmac_per_video"])
    if "rss" not in args.skip:
        with tempfile.TemporaryDirectory() as tmp:
            make_cache(Path(tmp), args.videos)
            size = sum(p.stat().st_size for p in Path(tmp).rglob("*.h5"))
            command = [sys.executable, __file__, "--child", tmp, "--rss-head", args.rss_head,
                       "--batch-size", str(args.batch_size), "--threads", str(args.threads)]  # fmt: skip
            child = subprocess.run(command, capture_output=True, text=True, env=os.environ, check=False)
            if child.returncode:
                sys.exit(f"training epoch failed:\n{child.stderr[-3000:]}")
            epoch = json.loads(child.stdout.strip().splitlines()[-1])
        result["rss"] = {"videos": args.videos, "cache_mb": round(size / 1e6, 1), "head": args.rss_head,
                         "batch_size": args.batch_size, **epoch}  # fmt: skip
        print("one epoch:", result["rss"])
    result["load_average_after"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
