"""The vcm-sdd head: parameters, CPU time per video, peak memory against frames.

At the paper's input (ResNet last-conv grids, 2048 × 7 × 7 per frame and stream, 6
frames per segment, 400 Kinetics classes): parameters of the head with both blocks and
without each; forward time per test video (one video per pass) at n = 8 and 16
segments; and the peak resident memory a forward pass adds above its inputs, for a
growing number of segments, each measured in a fresh process (``ru_maxrss`` only rises,
so one process per point). STC's cost is a depthwise 5 × 5 × 5 correlation and MFF
attends inside a segment, so the peak should grow linearly with frames.

    python bench/vcmsdd.py [--repeats 5] [--segments 2 4 8 16 32] [--out PATH]

``--ablation WORKSPACE`` instead trains the rows of the paper's Table 2 (grid features
+ average; + STC; + MFF; + both) on the synthetic dataset's cached ResNet grids for
every ``--seeds`` value, one data split and optimisation for all, and prints mean ±
sample std of test accuracy and top-5 and test accuracy per class family:

    python bench/vcmsdd.py --ablation /tmp/ws --features resnet50-rgb resnet50-flow \
        --frames 4 --dim 64 --heads 4 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from vpipe.models.heads import HeadBatch, create_head

from machine import cpu_model, load_average  # bench/machine.py, beside this script

GRID = (2048, 7, 7)
FRAMES = 6
CLASSES = 400


def build(**options) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_head("vcm-sdd", {"rgb": GRID, "flow": GRID}, CLASSES, frames=FRAMES, **options).eval()


def video(segments: int) -> HeadBatch:
    frames = segments * FRAMES
    x = {role: torch.randn(1, frames, *GRID) for role in ("rgb", "flow")}
    n = torch.tensor([frames])
    return HeadBatch(x, {"rgb": n, "flow": n.clone()}, torch.zeros(1, dtype=torch.int64))


def parameters() -> dict[str, int]:
    rows = {"stc+mff": {}, "stc only": {"mff": False}, "mff only": {"stc": False}, "neither": {"stc": False, "mff": False}}
    return {name: sum(p.numel() for p in build(**options).parameters()) for name, options in rows.items()}


@torch.inference_mode()
def ms_per_video(segments: int, repeats: int) -> float:
    head, batch = build(), video(segments)
    head(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        head(batch)
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def rss_mb() -> float:
    """Resident memory of this process now, from /proc/self/statm."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**20


def peak_child(segments: int, train: bool) -> None:
    """Print the MB of peak RSS one forward (and backward, when ``train``) adds above its
    inputs and weights, sampled every 0.2 ms by a thread while the pass runs (torch ops
    release the GIL); ``ru_maxrss`` cannot say it, import and model building set it first."""
    head, batch = build(), video(segments)
    if train:
        head.train()
    base, peak, done = rss_mb(), [0.0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.0002)

    watcher = threading.Thread(target=watch)
    watcher.start()
    with torch.set_grad_enabled(train):
        logits = head(batch)
        if train:
            logits.sum().backward()
    done.set()
    watcher.join()
    print(json.dumps({"segments": segments, "added_mb": max(peak[0], rss_mb()) - base}))


def peak_mb(segments: int, train: bool, threads: int) -> float:
    args = [sys.executable, __file__, "--child", str(segments), "--threads", str(threads)] + (["--train"] if train else [])
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["added_mb"]


ROWS = {"grid + average": (False, False), "+ STC": (True, False), "+ MFF": (False, True), "+ STC + MFF": (True, True)}


def ablation(args: argparse.Namespace) -> dict:
    """Train every Table 2 row for every seed; per row, the runs' scores and their mean ± std."""
    import numpy as np

    from vpipe.data.synthetic import FAMILIES
    from vpipe.pipeline.workspace import DatasetWorkspace
    from vpipe.train import TrainConfig, train

    ws = DatasetWorkspace(args.ablation, "synthetic")
    family_of = {name: family for family, names in FAMILIES.items() for name in names}
    result = {}
    for index, (row, (stc, mff)) in enumerate(ROWS.items()):
        if index not in args.rows:
            continue
        runs = []
        for seed in args.seeds:
            options = dict(stc=stc, mff=mff, frames=args.frames, dim=args.dim, heads=args.heads)
            config = TrainConfig(
                features=tuple(args.features), head="vcm-sdd", head_options=options, seed=seed, device="cpu",
                batch_size=16, max_epochs=args.epochs, patience=args.epochs, lr=3e-3,
            )
            start = time.perf_counter()
            metrics = train(ws, config, run_id=f"abl-vcm-{'' if stc else 'no'}stc-{'' if mff else 'no'}mff-s{seed}",
                            reuse=True).metrics
            families: dict[str, list[int]] = {}
            for cls in metrics["per_class"]:
                hits = families.setdefault(family_of[cls["class"]], [0, 0])
                hits[0] += round(cls["recall"] * cls["support"])
                hits[1] += cls["support"]
            runs.append({"seed": seed, "accuracy": metrics["accuracy"], "top5": metrics["top5"],
                         "parameters": metrics["parameters"], "seconds": time.perf_counter() - start,
                         **{f"acc_{f}": h / n for f, (h, n) in families.items()}})
            print(row, runs[-1], flush=True)
        keys = [k for k in runs[0] if k not in ("seed", "parameters", "seconds")]
        result[row] = {"runs": runs, "parameters": runs[0]["parameters"],
                       **{k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs], ddof=1)))
                          for k in keys}}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--segments", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("bench/results/vcmsdd.json"))
    parser.add_argument("--ablation", type=Path, help="workspace root with synthetic grids: run the ablation")
    parser.add_argument("--features", nargs=2, default=["resnet50-rgb", "resnet50-flow"])
    parser.add_argument("--frames", type=int, default=FRAMES, help="frames per segment of the plan")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, nargs="+", default=list(range(len(ROWS))), help="indices into ROWS")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--train", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child is not None:
        peak_child(args.child, args.train)
        return
    if args.ablation is not None:
        result = ablation(args)
        out = args.out if args.out.name != "vcmsdd.json" else args.out.with_name("vcmsdd_ablation.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        return
    input_mb = {n: 2 * n * FRAMES * torch.Size(GRID).numel() * 4 / 2**20 for n in args.segments}
    machine = {"cpu": cpu_model(), "python": platform.python_version(), "torch": torch.__version__,
               "threads": args.threads, "load_before": load_average()}
    result = {"machine": machine, "grid": GRID, "frames_per_segment": FRAMES, "classes": CLASSES}
    result["parameters"] = parameters()
    print(json.dumps(result["parameters"]), flush=True)
    result["ms_per_video"] = {n: ms_per_video(n, args.repeats) for n in (8, 16)}
    print(json.dumps(result["ms_per_video"]), flush=True)
    result["peak_mb"] = {}
    for n in args.segments:
        result["peak_mb"][n] = {"input_mb": input_mb[n], "inference_added_mb": peak_mb(n, False, args.threads),
                                "training_added_mb": peak_mb(n, True, args.threads)}
        print(n, json.dumps(result["peak_mb"][n]), flush=True)
    result["machine"]["load_after"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
