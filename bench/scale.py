"""Encode at dataset scale on a fabricated UCF101-shaped feature cache.

The cache is built through the real store API (``ShardWriter`` / ``write_index``) by
:func:`build_ucf101_like_cache`: 13,320 videos, 101 classes, an official-like
9,583 / 3,737 split, li3d ``pool`` features of 8 steps × 1024 float16. Each class draws
its steps around a few modes in a 64-d subspace plus isotropic noise, so the codebook
and the baseline see structure, not white noise. Smaller sizes reuse the same features
through a manifest holding the first N videos of each split (a symlinked features
directory), so every size reads the same shards.

Each (videos, K) point runs the real :func:`vpipe.stages.encode.run_encode` in a fresh
subprocess (its own peak RSS, nothing cached from the previous point) and reports wall
time per part, peak RSS and bytes on disk per artifact. Times are fitted as
``t = a · n^b`` over the sizes of each K, and projected to Kinetics-400 (240k videos).

    python bench/scale.py --root /tmp/scale --sizes 1000 3000 13320 --clusters 64 128 256

``--stages train report`` measures the later stages on the same sizes, each in a fresh
subprocess: :func:`vpipe.train.train` with the default head and options for ``--epochs``
epochs (seconds per epoch, peak RSS, run bytes on disk), then
:func:`vpipe.report.build_report` of that run (curves, 101-class confusion matrix, t-SNE
of its stated subsample), fitted and projected the same way:

    python bench/scale.py --root /tmp/scale --stages train report --epochs 5 --output bench/results/scale-train.json

Each train point also records the process CPU seconds of every training pass (user +
sys, beside its wall time), the load average, and a fixed reference workload (a float32
matrix product at the run's thread count) timed in the same process before training, so
that an epoch can be read as a multiple of the reference when the machine is shared. At
UCF101 size the first epoch is checked against the goals of one epoch ≤ 60 s and peak
RSS ≤ 3 GB (``goals`` in the JSON). ``--head`` trains another registered head at its
defaults (it must read the cache's ``pool`` layer).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model, load_average
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.store import ShardWriter, shard_name, write_index

FEATURES = "li3d-rgb"
UCF101_VIDEOS, UCF101_TRAIN, CLASSES = 13_320, 9_583, 101
KINETICS_400 = 240_000
RESULTS = Path(__file__).resolve().parent / "results"


def build_ucf101_like_cache(
    root: Path,
    *,
    videos: int = UCF101_VIDEOS,
    train: int = UCF101_TRAIN,
    classes: int = CLASSES,
    steps: int = 8,
    dim: int = 1024,
    videos_per_shard: int = 64,
    seed: int = 0,
    dataset: str = "ucf101like",
) -> DatasetWorkspace:
    """A workspace with a manifest and a ``li3d-rgb`` feature set shaped like UCF101 split 1.

    Labels cycle through the classes so every split holds every class; the first
    ``train`` videos are train, the rest test. Reusable by any benchmark that needs a
    large cache (training, report): pass ``steps=40`` for the long-clip variant.
    """
    rng = np.random.default_rng(seed)
    ws = DatasetWorkspace(Path(root), dataset)
    directory = ws.features_dir(FEATURES)
    basis = np.linalg.qr(rng.normal(size=(dim, 64)))[0].T
    modes = rng.normal(scale=3.0, size=(classes, 4, 64)) @ basis
    rows, manifest = [], []
    for first in range(0, videos, videos_per_shard):
        ids = range(first, min(first + videos_per_shard, videos))
        with ShardWriter(directory / shard_name("extract", f"v{first:06d}"), attrs={"backbone": "li3d"}) as writer:
            for i in ids:
                label = i % classes
                which = rng.integers(0, 4, size=steps)
                pool = np.maximum(modes[label, which] + rng.normal(size=(steps, dim)), 0.0)
                writer.add(f"v{i:06d}", 0, 0, {"pool": pool.astype(np.float16)})
        rows += writer.rows
        for i in ids:
            split = "train" if i < train else "test"
            manifest.append(
                {"video_id": f"v{i:06d}", "label": i % classes, "label_name": f"class{i % classes:03d}",
                 "split": split, "status": "ok"}
            )  # fmt: skip
    write_index(directory, rows)
    pd.DataFrame(manifest).to_parquet(ws.manifest_path)
    return ws


def subset_workspace(full: DatasetWorkspace, videos: int) -> DatasetWorkspace:
    """The first videos of each split of ``full`` in UCF101's train/test proportion, same shards."""
    ws = DatasetWorkspace(full.root, f"{full.dataset}-{videos}")
    manifest = pd.read_parquet(full.manifest_path)
    train = round(videos * UCF101_TRAIN / UCF101_VIDEOS)
    part = pd.concat([manifest[manifest["split"] == "train"][:train], manifest[manifest["split"] == "test"][: videos - train]])
    ws.dir.mkdir(parents=True, exist_ok=True)
    part.to_parquet(ws.manifest_path)
    link = ws.dir / "features"
    if not link.exists():
        link.symlink_to(full.dir / "features")
    return ws


def run_point(root: Path, dataset: str, clusters: int, options: dict[str, Any]) -> dict[str, Any]:
    """One encode in this process (called in a fresh subprocess by :func:`measure`)."""
    import torch

    from vpipe.stages.encode import EncodeOptions, run_encode

    torch.set_num_threads(os.cpu_count() or 1)
    ws = DatasetWorkspace(root, dataset)
    started = time.perf_counter()
    summary = run_encode(ws, FEATURES, clusters, EncodeOptions(**options))
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    disk = {"codebook": Path(summary["codebook"]["path"]).stat().st_size}
    disk.update({m: Path(e["path"]).stat().st_size for m, e in summary["encodings"].items()})
    baseline = summary["baseline"] or {"methods": {}}
    return {
        "videos": summary["videos"],
        "clusters": clusters,
        "options": options,
        "wall_seconds": round(wall, 2),
        "seconds": summary["seconds"],
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "bytes_on_disk": disk,
        "dims": {m: e["dim"] for m, e in summary["encodings"].items()},
        "codebook": {k: summary["codebook"][k] for k in ("sample_size", "descriptors_per_centroid", "pca", "device")},
        "baseline": {
            m: {k: r[k] for k in ("accuracy", "top5", "C", "seconds", "evaluations")}
            for m, r in baseline["methods"].items()
        },
    }


def _usage() -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2), "peak_rss_bytes": usage.ru_maxrss * 1024}


def _bytes_under(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


EPOCH_GOAL_SECONDS = 60.0
RSS_GOAL_BYTES = 3 * 10**9


def reference_seconds(repeats: int = 5) -> dict[str, float]:
    """CPU and wall seconds of a fixed workload (median of ``repeats``): 20 products of
    1024² float32 matrices at the current thread count, the yardstick an epoch is divided by."""
    import torch

    a = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(20):
            a @ a
        times.append((time.process_time() - cpu, time.perf_counter() - wall))
    return {"cpu_seconds": round(float(np.median([t[0] for t in times])), 3),
            "wall_seconds": round(float(np.median([t[1] for t in times])), 3)}  # fmt: skip


def _timed_training_passes() -> list[dict[str, float]]:
    """Record the process CPU and wall seconds of every training pass (``_Step.epoch``)."""
    from vpipe.train import trainer

    passes: list[dict[str, float]] = []
    original = trainer._Step.epoch

    def epoch(self, batches):  # type: ignore[no-untyped-def]
        cpu, wall = time.process_time(), time.perf_counter()
        out = original(self, batches)
        passes.append({"cpu_seconds": round(time.process_time() - cpu, 2), "wall_seconds": round(time.perf_counter() - wall, 2)})
        return out

    trainer._Step.epoch = epoch
    return passes


def train_point(root: Path, dataset: str, epochs: int, options: dict[str, Any]) -> dict[str, Any]:
    """One training run of ``options["head"]`` (default: the trainer's) at its default options,
    in a fresh subprocess; lr, schedule and the rest as ``vpipe train`` would choose."""
    import shutil

    import torch

    from vpipe.train import TrainConfig, train

    torch.set_num_threads(options.get("threads") or os.cpu_count() or 1)
    ws = DatasetWorkspace(root, dataset)
    head = options.get("head") or TrainConfig.head
    run_id = f"scale-{head}-e{epochs}"
    shutil.rmtree(ws.run_dir(run_id), ignore_errors=True)
    config = TrainConfig(features=(FEATURES,), head=head, max_epochs=epochs, patience=epochs, seed=0, device="cpu")
    reference = reference_seconds()
    passes = _timed_training_passes()
    started = time.perf_counter()
    result = train(ws, config, run_id=run_id)
    wall = time.perf_counter() - started
    seconds = result.history["seconds"].astype(float).tolist()
    return {
        "stage": "train",
        "videos": len(pd.read_parquet(ws.manifest_path)),
        "epochs": epochs,
        "head": config.head,
        "threads": torch.get_num_threads(),
        "load_average": load_average(),
        "reference": reference,
        "wall_seconds": round(wall, 2),
        "epoch_seconds": [round(s, 2) for s in seconds],
        "median_epoch_seconds": round(float(np.median(seconds)), 2),
        "training_passes": passes,
        "first_pass_over_reference": {
            "cpu": round(passes[0]["cpu_seconds"] / reference["cpu_seconds"], 1),
            "wall": round(passes[0]["wall_seconds"] / reference["wall_seconds"], 1),
        },
        "parameters": result.metrics["parameters"],
        "test_accuracy": result.metrics["accuracy"],
        "bytes_on_disk": {"run": _bytes_under(ws.run_dir(run_id))},
        **_usage(),
    }


def report_point(root: Path, dataset: str, epochs: int, options: dict[str, Any]) -> dict[str, Any]:
    """The report of :func:`train_point`'s run: plots, confusion matrix, t-SNE subsample, report.md."""
    import torch

    from vpipe.report import build_report
    from vpipe.report.build import MAX_TSNE_VIDEOS

    torch.set_num_threads(os.cpu_count() or 1)
    from vpipe.train import TrainConfig

    ws = DatasetWorkspace(root, dataset)
    run_id = f"scale-{options.get('head') or TrainConfig.head}-e{epochs}"
    started = time.perf_counter()
    build_report(ws, [run_id], device="cpu")
    wall = time.perf_counter() - started
    return {
        "stage": "report",
        "videos": len(pd.read_parquet(ws.manifest_path)),
        "wall_seconds": round(wall, 2),
        "tsne_videos": min(MAX_TSNE_VIDEOS, len(json.loads((ws.run_dir(run_id) / "config.json").read_text())["data"]["test"])),
        "bytes_on_disk": {"plots": _bytes_under(ws.run_dir(run_id) / "plots")},
        **_usage(),
    }


POINTS = {"encode": "run_point", "train": "train_point", "report": "report_point"}


def measure(root: Path, dataset: str, number: int, options: dict[str, Any], stage: str = "encode") -> dict[str, Any]:
    """One stage's point (``number`` is K for encode, epochs otherwise) in a fresh interpreter.

    A fresh process per point, so peak RSS is this point's alone.
    """
    code = (
        f"import json, sys; sys.path.insert(0, sys.argv[1]); from bench.scale import {POINTS[stage]} as point; "
        "print(json.dumps(point(__import__('pathlib').Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), "
        "json.loads(sys.argv[5]))))"
    )
    repo = str(Path(__file__).resolve().parent.parent)
    out = subprocess.run(
        [sys.executable, "-c", code, repo, str(root), dataset, str(number), json.dumps(options)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _group(point: dict[str, Any]) -> str:
    return str(point["clusters"]) if "clusters" in point else point["stage"]


def scaling(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Exponent b of ``t = a·n^b`` per K or stage (least squares in log space) and the 240k projection."""
    fits = {}
    for k in sorted({_group(p) for p in points}):
        mine = sorted((p for p in points if _group(p) == k), key=lambda p: p["videos"])
        if len(mine) < 2:
            continue
        n = np.log([p["videos"] for p in mine])
        t = np.log([p["wall_seconds"] for p in mine])
        b, a = np.polyfit(n, t, 1)
        fits[k] = {
            "exponent": round(float(b), 3),
            "kinetics400_projected_seconds": round(float(np.exp(a) * KINETICS_400**b), 1),
            "kinetics400_linear_disk_bytes": {
                m: int(size / mine[-1]["videos"] * KINETICS_400) for m, size in mine[-1]["bytes_on_disk"].items()
            },
        }
    return fits


def goals(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each UCF101-sized train point against one epoch ≤ 60 s and peak RSS ≤ 3 GB.

    The epoch is the first training pass plus its validation (the history's seconds); on a
    shared machine its wall time also carries the other jobs, so the pass's CPU seconds
    are given beside it as the figure a quiet machine would approach.
    """
    checks = []
    for p in points:
        if p.get("stage") != "train" or p["videos"] < UCF101_VIDEOS:
            continue
        epoch = p["epoch_seconds"][0]
        checks.append({
            "head": p["head"], "videos": p["videos"], "epoch_seconds": epoch,
            "training_pass_cpu_seconds": p["training_passes"][0]["cpu_seconds"],
            "epoch_goal_seconds": EPOCH_GOAL_SECONDS, "epoch_met": epoch <= EPOCH_GOAL_SECONDS,
            "peak_rss_bytes": p["peak_rss_bytes"], "rss_goal_bytes": RSS_GOAL_BYTES,
            "rss_met": p["peak_rss_bytes"] <= RSS_GOAL_BYTES, "load_average": p["load_average"],
        })  # fmt: skip
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/tmp/vpipe-scale"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, UCF101_VIDEOS])
    parser.add_argument("--clusters", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--methods", default="bof,vlad,fv")
    parser.add_argument("--no-baseline", action="store_true", help="Time codebook + encodings only.")
    parser.add_argument("--pca", default="auto")
    parser.add_argument("--stages", nargs="+", choices=tuple(POINTS), default=["encode"])
    parser.add_argument("--epochs", type=int, default=5, help="training epochs per train point")
    parser.add_argument("--head", default=None, help="registered head of the train points (default: vpipe train's)")
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads of the train points (default: every core; 1 keeps a shared machine's figures steady)",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args()
    full = DatasetWorkspace(args.root, "ucf101like")
    if not full.manifest_path.exists():
        started = time.perf_counter()
        build_ucf101_like_cache(args.root)
        print(f"built the cache in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    options = {
        "methods": args.methods.split(","),
        "pca": args.pca if args.pca == "auto" else int(args.pca),
        "baseline": not args.no_baseline,
    }
    if args.head:
        options["head"] = args.head
    if args.threads:
        options["threads"] = args.threads
    work = [("encode", k, size) for k in args.clusters for size in args.sizes if "encode" in args.stages]
    work += [(stage, args.epochs, size) for size in args.sizes for stage in ("train", "report") if stage in args.stages]
    points = []
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for stage, number, size in work:
        ws = full if size >= UCF101_VIDEOS else subset_workspace(full, size)
        points.append(measure(args.root, ws.dataset, number, options, stage))
        print(json.dumps(points[-1]), file=sys.stderr)
        machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": load_average()}
        result = {"machine": machine, "points": points, "scaling": scaling(points), "goals": goals(points)}
        args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps({"scaling": result["scaling"], "goals": result["goals"]}, indent=2))


if __name__ == "__main__":
    main()
