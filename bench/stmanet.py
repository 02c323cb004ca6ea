"""Benchmark: the ST-MANet head and the r3d50 stage-map cache it reads, on CPU.

Four figures, at the paper's input (32 frames of 112², st-manet §4.1):

* ``params``: head parameters for 101 classes at the default widths and at
  ``reduction`` (query/key widths divided);
* ``gflops_per_window``: multiply-adds × 2 of one window's head forward pass, and of
  r3d50 itself on one clip (torch's FLOP counter: convolutions and matrix products);
* ``ms_per_video``: evaluation forward pass of one video of ``--windows`` dense windows
  (UCF101 averages about three), best of ``--repeats``;
* ``bytes_per_clip``: float16 bytes of the four cached stage maps plus ``pool``, by
  formula and as written by :class:`vpipe.store.ShardWriter` (file size / clips);
* ``extract``: r3d50 clips per second with the stage maps against the pooled vector
  only, each forward + conversion + shard write of a batch, interleaved and best of
  ``--repeats``; ``overhead_end_to_end`` = 1 − maps / pooled. On a loaded machine the
  forward pass's noise exceeds the difference, so the caching work is also timed alone
  (pooling the four maps and storing them, minus storing ``pool``, on the same stage
  outputs) and divided by the forward time: ``overhead_caching_work``.

Weights stay random (speed does not depend on them). Writes JSON to ``--out`` with the
machine and load average; on a shared machine rates are lower and noisier.

    python bench/stmanet.py [--threads 1] [--repeats 3] [--batch 4] [--out PATH]

With ``--ablation-workspace ROOT`` it runs Table 4 instead: the rows of :data:`ROWS`
trained on the dataset's cached ``r3d50-rgb`` stage maps for each ``--seeds`` seed,
test accuracy mean ± sample std per row (``--out`` defaults to
bench/results/stmanet-ablation.json):

    python bench/stmanet.py --ablation-workspace /tmp/ws --dataset synthetic --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from machine import cpu_model, load_average  # bench/machine.py, beside this script
from vpipe.models import backbone
from vpipe.models.backbones.resnet3d import GRID, STAGES, stage_shapes
from vpipe.models.heads import create_head
from vpipe.models.heads.registry import HeadBatch
from vpipe.models.heads.stmanet import STMANet
from vpipe.store import ShardWriter

INPUT = (3, 32, 112, 112)


def gflops(module: torch.nn.Module, *inputs: object) -> float:
    """Forward-pass GFLOPs of ``module`` (2 per multiply-add), counted, not timed."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(*inputs)
    return round(counter.get_total_flops() / 1e9, 2)


def flop_figures(reduction: int) -> dict[str, float]:
    """Head GFLOPs per window at both widths and r3d50's per clip, at :data:`INPUT`."""
    shapes = dict(STMANet.example_shapes)
    batch = HeadBatch(
        {role: torch.randn(1, 1, *shape) for role, shape in shapes.items()},
        {role: torch.tensor([1]) for role in shapes},
        torch.zeros(1, dtype=torch.long),
    )
    out = {f"head reduction={r}": gflops(create_head("st-manet", shapes, 101, reduction=r).eval(), batch) for r in (1, reduction)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = backbone("r3d50").eval()
    out["r3d50"] = gflops(model, torch.randn(1, *INPUT))
    return out


def head_figures(reduction: int, windows: int, repeats: int) -> dict[str, object]:
    out: dict[str, object] = {}
    shapes = dict(STMANet.example_shapes)
    for r in (1, reduction):
        head = create_head("st-manet", shapes, 101, reduction=r).eval()
        batch = HeadBatch(
            {role: torch.randn(1, windows, *shape) for role, shape in shapes.items()},
            {role: torch.tensor([windows]) for role in shapes},
            torch.zeros(1, dtype=torch.long),
        )
        times = []
        with torch.inference_mode():
            head(batch)
            for _ in range(repeats):
                start = time.perf_counter()
                head(batch)
                times.append(1000 * (time.perf_counter() - start))
        out[f"reduction={r}"] = {
            "params": int(sum(p.numel() for p in head.parameters())),
            "ms_per_video": round(min(times), 1),
            "ms_samples": [round(t, 1) for t in times],
        }
    return out


def cache_bytes(directory: Path, clips: int = 8) -> dict[str, object]:
    shapes = stage_shapes(INPUT)
    formula = 2 * sum(int(np.prod(s)) for s in shapes.values())
    path = directory / "shard.h5"
    rng = np.random.default_rng(0)
    with ShardWriter(path, attrs={"bench": "stmanet"}) as writer:
        for clip in range(clips):
            writer.add("v", clip, 0, {name: rng.random(shape, dtype=np.float32) for name, shape in shapes.items()})
    return {
        "shapes": {name: list(s) for name, s in shapes.items()},
        "formula": formula,
        "written": path.stat().st_size // clips,
    }


def pooled_only(model: torch.nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """r3d50's forward without the stage-map pooling: the ``pool`` vector alone."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for name in STAGES:
        x = getattr(model, name)(x)
    return {"pool": x.mean(dim=(2, 3, 4))}


def raw_stages(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """r3d50's unpooled stage outputs."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    out = []
    for name in STAGES:
        x = getattr(model, name)(x)
        out.append(x)
    return out


def store(directory: Path, name: str, layers: dict[str, torch.Tensor]) -> None:
    """What the extract stage does after the forward pass: float32 numpy, one shard row per clip."""
    arrays = {k: v.float().numpy() for k, v in layers.items()}
    with ShardWriter(directory / f"{name}.h5", attrs={"bench": name}) as writer:
        for i in range(len(next(iter(arrays.values())))):
            writer.add("v", i, 0, {k: v[i] for k, v in arrays.items()})


def extract_rates(directory: Path, batch: int, repeats: int) -> dict[str, object]:
    """End-to-end rates (forward + store), and the caching work alone: the stage-map
    pooling and storing against storing ``pool`` only, on the same stage outputs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = backbone("r3d50").eval()
    x = torch.randn(batch, *INPUT)
    forwards = {"maps": model.forward_features, "pooled": lambda clips: pooled_only(model, clips)}
    samples: dict[str, list[float]] = {name: [] for name in forwards}
    extra: dict[str, list[float]] = {"maps": [], "pooled": []}
    with torch.inference_mode():
        stages = raw_stages(model, x)
        for repeat in range(repeats):
            for name, forward in forwards.items():
                start = time.perf_counter()
                store(directory, f"{name}-{repeat}", forward(x))
                samples[name].append(batch / (time.perf_counter() - start))
            start = time.perf_counter()
            maps = {n: F.adaptive_avg_pool3d(s, (s.shape[2], *GRID)) for n, s in zip(STAGES, stages)}
            store(directory, f"cache-maps-{repeat}", {**maps, "pool": stages[-1].mean(dim=(2, 3, 4))})
            extra["maps"].append(time.perf_counter() - start)
            start = time.perf_counter()
            store(directory, f"cache-pool-{repeat}", {"pool": stages[-1].mean(dim=(2, 3, 4))})
            extra["pooled"].append(time.perf_counter() - start)
    best = {name: max(rates) for name, rates in samples.items()}
    forward_s = batch / best["pooled"]
    cache_s = min(extra["maps"]) - min(extra["pooled"])
    return {
        "clips_per_s": {name: round(rate, 3) for name, rate in best.items()},
        "samples": {name: [round(r, 3) for r in rates] for name, rates in samples.items()},
        "overhead_end_to_end": round(1 - best["maps"] / best["pooled"], 4),
        "stage_map_caching_ms_per_clip": round(1000 * cache_s / batch, 2),
        "overhead_caching_work": round(cache_s / forward_s, 5),
    }


#: Table 4 of the paper as head options, in its order, with the paper's accuracy
#: (UCF101): R50, + TDA, + SDA, + TDA + SDA, R50 + MF, and the full ST-MANet (all
#: components; the diversity loss of eq. 9 is part of it).
ROWS: tuple[tuple[str, dict[str, object]], ...] = (
    ("3D ResNet-50 pooled + linear", {"tda": False, "sda": False, "multilevel": False, "lambda_s": 0.0, "lambda_t": 0.0}),
    ("+ TDA", {"tda": True, "sda": False, "multilevel": False, "lambda_s": 0.0, "lambda_t": 0.0}),
    ("+ SDA", {"tda": False, "sda": True, "multilevel": False, "lambda_s": 0.0, "lambda_t": 0.0}),
    ("+ TDA + SDA", {"tda": True, "sda": True, "multilevel": False, "lambda_s": 0.0, "lambda_t": 0.0}),
    ("R50 + MF", {"tda": False, "sda": False, "multilevel": True, "lambda_s": 0.0, "lambda_t": 0.0}),
    ("+ TDA + SDA + MF (ST-MANet)", {}),
)

#: Table 4's accuracies, row for row.
PAPER_ACCURACY = (0.8317, 0.8945, 0.9012, 0.9278, 0.8416, 0.9605)


def ablation(args: argparse.Namespace) -> dict[str, object]:
    from vpipe.pipeline.workspace import DatasetWorkspace
    from vpipe.train import TrainConfig, train

    ws = DatasetWorkspace(Path(args.ablation_workspace), args.dataset)
    rows = []
    for index, (label, options) in enumerate(ROWS):
        if index not in args.rows:
            continue
        head_options = {"reduction": args.reduction, **options}
        scores = []
        for seed in args.seeds:
            config = TrainConfig(
                features=("r3d50-rgb",),
                head="st-manet",
                head_options=head_options,
                max_epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                seed=seed,
                device="cpu",
            )
            result = train(ws, config, run_id=f"stmanet-ablation-{index}-e{args.epochs}-lr{args.lr:g}-s{seed}", reuse=True, threads=args.threads)
            scores.append(float(result.metrics["accuracy"]))
        rows.append(
            {
                "row": label,
                "paper_accuracy": PAPER_ACCURACY[index],
                "head_options": head_options,
                "accuracy": scores,
                "mean": float(np.mean(scores)),
                "std": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
            }
        )
        print(f"| {label} | {rows[-1]['mean']:.3f} ± {rows[-1]['std']:.3f} | {', '.join(f'{a:.3f}' for a in scores)} |")
    return {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seeds": args.seeds, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="clips per r3d50 forward")
    parser.add_argument("--windows", type=int, default=3, help="dense windows per video")
    parser.add_argument("--reduction", type=int, default=8, help="the lighter head variant measured")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--ablation-workspace", default=None, help="run Table 4 on this workspace instead")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, nargs="+", default=list(range(len(ROWS))), help="indices into ROWS")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4, help="the head's declared default")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.ablation_workspace:
        out = args.out or Path("bench/results/stmanet-ablation.json")
        report = {"machine": {"cpu": cpu_model(), "threads": args.threads, "load_before": load_average()}}
        report.update(ablation(args))
        report["machine"]["load_after"] = load_average()  # type: ignore[index]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        return
    report: dict[str, object] = {
        "machine": {"cpu": cpu_model(), "threads": args.threads, "load_before": load_average()},
        "input": list(INPUT),
        "windows": args.windows,
    }
    with tempfile.TemporaryDirectory() as tmp:
        report["bytes_per_clip"] = cache_bytes(Path(tmp))
        report["gflops_per_window"] = flop_figures(args.reduction)
        report["head"] = head_figures(args.reduction, args.windows, args.repeats)
        report["extract"] = extract_rates(Path(tmp), args.batch, args.repeats)
    report["machine"]["load_after"] = load_average()  # type: ignore[index]
    out = args.out or Path("bench/results/stmanet.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
