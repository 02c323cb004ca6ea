"""Soft aggregation heads by codebook size: parameters and test time per video.

Reproduces the measurement behind Table 2 of the soft-correlation concatenation
aggregation paper (K = 1024, 256, 128, 64) for our BiLSTM + soft-aggregation head:
parameter count of the whole head (UCF101's 101 classes, 1024-d I3D features) and
forward time per test video, for each aggregation and the concat fusion. Writes
JSON and prints a Markdown table with the paper's figures beside ours.

    python bench/aggregation.py [--steps 40] [--videos 32] [--device cpu] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from vpipe.models.heads import BiLSTMSoftAggHead

from machine import cpu_model  # bench/machine.py, beside this script

#: Table 2 of the paper: K -> (parameters, test time, test accuracy) of I3D-BiLSTM + concat aggregation.
PAPER_TABLE_2 = {1024: ("156.78M", "8.63s", 0.918), 256: ("74.71M", "5.17s", 0.921), 128: ("11.80M", "1.58s", 0.921), 64: ("9.64M", "1.57s", 0.899)}
CLUSTERS = (1024, 256, 128, 64)
AGGREGATIONS = ("softbof", "softvlad", "softfv", "concat")


@torch.inference_mode()
def time_per_video(head: torch.nn.Module, steps: int, videos: int, batch: int, device: torch.device) -> float:
    x = torch.randn(batch, steps, 1024, device=device)
    lengths = torch.full((batch,), steps, dtype=torch.long)
    head(x, lengths)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(max(1, videos // batch)):
        head(x, lengths)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (max(1, videos // batch) * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="feature steps per video (e.g. 5 clips x 8)")
    parser.add_argument("--videos", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1, help="videos per forward pass (1 = one test video at a time)")
    parser.add_argument("--classes", type=int, default=101)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("bench/results/aggregation.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = []
    for clusters in CLUSTERS:
        for aggregation in AGGREGATIONS:
            head = BiLSTMSoftAggHead(
                1024, args.classes, temporal="bilstm", hidden=args.hidden, aggregation=aggregation, num_clusters=clusters
            ).to(device).eval()
            params = sum(p.numel() for p in head.parameters())
            seconds = time_per_video(head, args.steps, args.videos, args.batch, device)
            rows.append({"clusters": clusters, "aggregation": aggregation, "params": params, "ms_per_video": seconds * 1e3})
            print(f"K={clusters:5d} {aggregation:9s} {params / 1e6:8.2f}M {seconds * 1e3:8.2f} ms/video", flush=True)
            del head
    result = {
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average": os.getloadavg(),
        },
        "settings": vars(args) | {"out": str(args.out)},
        "rows": rows,
        "paper_table_2": {str(k): v for k, v in PAPER_TABLE_2.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print("\n| K | paper params | paper test time | ours concat params | ours concat ms/video | softvlad params | softvlad ms/video |")
    print("|---|---|---|---|---|---|---|")
    by = {(r["clusters"], r["aggregation"]): r for r in rows}
    for clusters in CLUSTERS:
        paper = PAPER_TABLE_2[clusters]
        concat, vlad = by[(clusters, "concat")], by[(clusters, "softvlad")]
        print(
            f"| {clusters} | {paper[0]} | {paper[1]} | {concat['params'] / 1e6:.2f}M | {concat['ms_per_video']:.2f} "
            f"| {vlad['params'] / 1e6:.2f}M | {vlad['ms_per_video']:.2f} |"
        )


if __name__ == "__main__":
    main()
