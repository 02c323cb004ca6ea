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
RSS ≤ 3 GB (``goals`` in the JSON).

``--head`` names one or more registered heads, each trained at its defaults. A head
that reads per-frame maps (``deep-fusion``, ``st-manet``, ``vcm-sdd``) gets its own
fabricated cache of the layers, shapes and clips its backbone and plan cache at the
defaults (:data:`MAP_CACHES`; 6.8, 1.6 and 19.3 MB per video), with as many videos as
the largest size asked for, in UCF101's train/test proportion; smaller sizes are its
first videos of each split. Such caches outgrow the trainer's 2 GiB input cache at a
few hundred videos, so each point also records the largest batch and the most decoded
input the trainer held, beside the input bytes it read: the streamed path keeps memory
flat in the dataset size. Per head, the epoch's CPU seconds are extrapolated to 13,320
videos from the measured sizes (:func:`extrapolated`), and each point is divided by the
default head's epoch at the same size, measured in the same run:

    python bench/scale.py --root /tmp/scale --stages train --epochs 1 --threads 2 \
        --head bilstm-softagg st-manet --sizes 250 1000

The trainer runs each batch as micro-batches sized by its memory budget
(:mod:`vpipe.train.memory`; ``--memory-budget GIB`` sets it, default the trainer's):
each train point records the micro-batch and the figures it came from, and ``budgets``
in the JSON compares the point's peak RSS with that budget.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class MapCache:
    """The cached layers a map-reading head reads at its defaults, as one video's clips.

    ``layers`` gives one clip row's shape per layer (float16, as the backbones store
    them); every feature set in ``features`` holds the same layers. ``channel_axis`` is
    the rows' channel axis: 1 for per-frame maps ``(frames, C, h, w)``, 0 for clip maps
    ``(C, T, h, w)``.
    """

    features: tuple[str, ...]
    layers: dict[str, tuple[int, ...]]
    clips: int
    channel_axis: int
    provenance: dict[str, str]

    def video_bytes(self) -> int:
        """Bytes of one video's inputs over every feature set, as stored."""
        row = sum(int(np.prod(shape)) for shape in self.layers.values()) * 2
        return row * self.clips * len(self.features)


#: What each map-reading head reads at its defaults. deep-fusion: the ``uniform`` plan's
#: T = 17 frames of VGG-16 conv5_3 (512 × 14 × 14), rgb and flow. st-manet: r3d50 stage
#: maps of the ``dense`` plan's 64-frame windows, three per video (UCF101's mean length
#: of about 186 frames). vcm-sdd: the ``tsn`` plan's 8 segments × 6 frames of ResNet-50
#: grids (2048 × 7 × 7), rgb and flow.
MAP_CACHES = {
    "deep-fusion": MapCache(
        ("vgg16-rgb", "vgg16-flow"), {"conv5_3": (17, 512, 14, 14)}, 1, 1, {"backbone": "vgg16", "plan": "uniform"}
    ),
    "st-manet": MapCache(
        ("r3d50-rgb",),
        {"layer1": (256, 16, 4, 4), "layer2": (512, 8, 4, 4), "layer3": (1024, 4, 4, 4), "layer4": (2048, 2, 4, 4)},
        3,
        0,
        {"backbone": "r3d50", "plan": "dense"},
    ),
    "vcm-sdd": MapCache(
        ("resnet50-rgb", "resnet50-flow"), {"grid": (48, 2048, 7, 7)}, 1, 1, {"backbone": "resnet50", "plan": "tsn"}
    ),
}


def build_map_cache(
    root: Path, head: str, videos: int, *, seed: int = 0, videos_per_shard: int = 16
) -> DatasetWorkspace:
    """A workspace ``maps-<head>`` with ``videos`` videos of :data:`MAP_CACHES` ``[head]``.

    Train and test in UCF101's proportion (train first), labels cycling through the 101
    classes. Each clip row is a slice of a shared float16 noise bank at a random offset
    plus a class-dependent offset on a few channels: generating every value afresh would
    take longer than the epochs measured, and the head's work does not depend on them.
    """
    spec = MAP_CACHES[head]
    rng = np.random.default_rng(seed)
    ws = DatasetWorkspace(Path(root), f"maps-{head}")
    largest = max(int(np.prod(shape)) for shape in spec.layers.values())
    bank = np.maximum(rng.normal(size=4 * largest), 0.0).astype(np.float16)
    train = round(videos * UCF101_TRAIN / UCF101_VIDEOS)
    ids = [f"v{i:06d}" for i in range(videos)]
    for name in spec.features:
        rows = []
        for first in range(0, videos, videos_per_shard):
            path = ws.features_dir(name) / shard_name("extract", ids[first])
            with ShardWriter(path, attrs=spec.provenance) as writer:
                for i in range(first, min(first + videos_per_shard, videos)):
                    for clip in range(spec.clips):
                        arrays = {}
                        for layer, shape in spec.layers.items():
                            size = int(np.prod(shape))
                            start = int(rng.integers(0, len(bank) - size))
                            row = bank[start : start + size].reshape(shape).copy()
                            channels = np.moveaxis(row, spec.channel_axis, 0)
                            channels[i % CLASSES :: CLASSES] += 1
                            arrays[layer] = row
                        writer.add(ids[i], clip, 0, arrays)
            rows += writer.rows
        write_index(ws.features_dir(name), rows)
    manifest = [
        {"video_id": v, "label": i % CLASSES, "label_name": f"class{i % CLASSES:03d}",
         "split": "train" if i < train else "test", "status": "ok"}
        for i, v in enumerate(ids)
    ]  # fmt: skip
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

    def epoch(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        cpu, wall = time.process_time(), time.perf_counter()
        out = original(self, *args, **kwargs)
        passes.append({"cpu_seconds": round(time.process_time() - cpu, 2), "wall_seconds": round(time.perf_counter() - wall, 2)})
        return out

    trainer._Step.epoch = epoch
    return passes


def _timed_scoring_passes() -> list[dict[str, float]]:
    """Record the process CPU and wall seconds of every scoring pass the trainer runs
    (validation after each epoch, then the test split), as for the training passes."""
    from vpipe.train import trainer

    passes: list[dict[str, float]] = []
    original = trainer.predict

    def predict(*args, **kwargs):  # type: ignore[no-untyped-def]
        cpu, wall = time.process_time(), time.perf_counter()
        out = original(*args, **kwargs)
        passes.append({"cpu_seconds": round(time.process_time() - cpu, 2), "wall_seconds": round(time.perf_counter() - wall, 2)})
        return out

    trainer.predict = predict
    return passes


def _held_inputs() -> dict[str, int]:
    """Record the largest batch the trainer built (float32 input bytes) and the most
    decoded input its reader's cache held at once, through the functions it calls."""
    from vpipe.train import data

    held = {"largest_batch_bytes": 0, "most_cached_bytes": 0, "cache_bound_bytes": data.DEFAULT_CACHE_BYTES}
    collate, read = data.collate_heads, data.InputReader.read

    def collate_heads(batch):  # type: ignore[no-untyped-def]
        out = collate(batch)
        size = sum(x.nbytes for x in out.inputs.values())
        held["largest_batch_bytes"] = max(held["largest_batch_bytes"], size)
        return out

    def reader_read(self, video_id, view):  # type: ignore[no-untyped-def]
        out = read(self, video_id, view)
        held["most_cached_bytes"] = max(held["most_cached_bytes"], self._cached)
        return out

    data.collate_heads = collate_heads
    data.InputReader.read = reader_read
    return held


def _splits(run: Path) -> dict[str, list[str]]:
    data = json.loads((run / "config.json").read_text())["data"]
    return {role: data[role] for role in ("train", "val", "test")}


def head_features(head: str) -> tuple[str, ...]:
    """The feature sets a head trains on in this benchmark's caches."""
    return MAP_CACHES[head].features if head in MAP_CACHES else (FEATURES,)


def input_bytes(ws: DatasetWorkspace, head: str) -> int:
    """Bytes of every cached input of the run's videos (one view), as stored."""
    videos = len(pd.read_parquet(ws.manifest_path))
    if head in MAP_CACHES:
        return videos * MAP_CACHES[head].video_bytes()
    with ws.open_features(FEATURES) as features:
        row = json.loads(features.index["layers"].iloc[0])["pool"]["shape"]
    return videos * int(np.prod(row)) * 2


def train_point(root: Path, dataset: str, epochs: int, options: dict[str, Any]) -> dict[str, Any]:
    """One training run of ``options["head"]`` (default: the trainer's) at its default options,
    in a fresh subprocess; lr, schedule and the rest as ``vpipe train`` would choose."""
    import shutil

    import torch

    from vpipe.train import TrainConfig, train
    from vpipe.train.config import DEFAULT_MEMORY_BUDGET

    torch.set_num_threads(options.get("threads") or os.cpu_count() or 1)
    ws = DatasetWorkspace(root, dataset)
    head = options.get("head") or TrainConfig.head
    run_id = f"scale-{head}-e{epochs}"
    shutil.rmtree(ws.run_dir(run_id), ignore_errors=True)
    batch = {"batch_size": options["batch_size"]} if options.get("batch_size") else {}
    config = TrainConfig(
        features=head_features(head), head=head, max_epochs=epochs, patience=epochs, seed=0, device="cpu", **batch
    )
    reference = reference_seconds()
    passes = _timed_training_passes()
    scoring = _timed_scoring_passes()
    held = _held_inputs()
    started = time.perf_counter()
    budget = round(options["memory_budget"] * 1024**3) if options.get("memory_budget") else DEFAULT_MEMORY_BUDGET
    result = train(ws, config, run_id=run_id, memory_budget=budget)
    wall = time.perf_counter() - started
    environment = json.loads((result.directory / "config.json").read_text())["environment"]
    seconds = result.history["seconds"].astype(float).tolist()
    return {
        "stage": "train",
        "videos": len(pd.read_parquet(ws.manifest_path)),
        "epochs": epochs,
        "head": config.head,
        "batch_size": config.batch_size,
        "micro_batch": environment["micro_batch"],
        "memory_budget_bytes": budget,
        "threads": torch.get_num_threads(),
        "load_average": load_average(),
        "reference": reference,
        "wall_seconds": round(wall, 2),
        "epoch_seconds": [round(s, 2) for s in seconds],
        "median_epoch_seconds": round(float(np.median(seconds)), 2),
        "training_passes": passes,
        "scoring_passes": scoring,
        "first_pass_over_reference": {
            "cpu": round(passes[0]["cpu_seconds"] / reference["cpu_seconds"], 1),
            "wall": round(passes[0]["wall_seconds"] / reference["wall_seconds"], 1),
        },
        "parameters": result.metrics["parameters"],
        "test_accuracy": result.metrics["accuracy"],
        "bytes_on_disk": {"run": _bytes_under(ws.run_dir(run_id))},
        "split_videos": {role: len(split) for role, split in _splits(result.directory).items()},
        "input_bytes": input_bytes(ws, head),
        **held,
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
        capture_output=True, text=True,
    )  # fmt: skip
    if out.returncode:
        sys.exit(f"{stage} point of {dataset} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _group(point: dict[str, Any]) -> str:
    if "clusters" in point:
        return str(point["clusters"])
    return f"train {point['head']}" if point["stage"] == "train" else point["stage"]


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


#: The trainer's split of the fabricated UCF101-sized cache (seed 0): fit and validation
#: videos of the 9,583 train videos.
UCF101_FIT, UCF101_VAL = 8_146, 1_437


def _line(x: list[float], y: list[float]) -> tuple[float, float]:
    """Intercept and slope of the least-squares line through (x, y)."""
    b, a = np.polyfit(np.array(x, dtype=float), np.array(y, dtype=float), 1)
    return float(a), float(b)


def _validation_cpu(point: dict[str, Any]) -> tuple[float, bool]:
    """CPU seconds of the first validation pass; estimated from its wall time at the
    training pass's CPU/wall ratio (True) for points recorded without scoring passes."""
    if point.get("scoring_passes"):
        return point["scoring_passes"][0]["cpu_seconds"], False
    first = point["training_passes"][0]
    wall = point["epoch_seconds"][0] - first["wall_seconds"]
    return wall * first["cpu_seconds"] / first["wall_seconds"], True


def extrapolated(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Per head, the first epoch's CPU seconds at 13,320 videos, extrapolated from the measured sizes.

    CPU seconds, because wall time on a shared machine follows the other jobs (it moved
    by 2× between points of one run here); with one torch thread they are the epoch a
    quiet core would take. An epoch is a training pass over the fit videos, fitted as
    ``t = a + b·n`` in fit videos, and a validation pass, taken per validation video at
    the largest size (the 101-class validation carve barely grows from 250 to 1,000
    videos, so a line through those points says nothing); both are evaluated at UCF101's
    split (8,146 fit, 1,437 validation). Peak RSS is fitted in all videos; with the
    decoded-input cache full (2 GiB) it stops growing. These extrapolate beyond the
    largest size measured (``times_largest_measured``) and are named as such.
    """
    out = {}
    for head in sorted({p["head"] for p in points if p.get("stage") == "train"}):
        mine = sorted((p for p in points if p.get("stage") == "train" and p["head"] == head), key=lambda p: p["videos"])
        if len({p["videos"] for p in mine}) < 2:
            continue
        fit = [p["split_videos"]["train"] for p in mine]
        a, b = _line(fit, [p["training_passes"][0]["cpu_seconds"] for p in mine])
        validation, estimated = _validation_cpu(mine[-1])
        per_val = validation / mine[-1]["split_videos"]["val"]
        out[head] = {
            "measured_videos": [p["videos"] for p in mine],
            "times_largest_measured": round(UCF101_VIDEOS / mine[-1]["videos"], 1),
            "training_pass_cpu": {"fit": f"{a:.4g} + {b:.4g}·fit_videos", "at_13320": round(a + b * UCF101_FIT, 1)},
            "validation_cpu_per_video": round(per_val, 4),
            "validation_cpu_estimated_from_wall": estimated,
            "epoch_cpu_seconds_at_13320": round(a + b * UCF101_FIT + per_val * UCF101_VAL, 1),
            "largest_peak_rss_bytes": max(p["peak_rss_bytes"] for p in mine),
        }
    return out


def against_default_head(points: list[dict[str, Any]], default: str) -> list[dict[str, Any]]:
    """Each head's first epoch as a multiple of the default head's at the same size, same run."""
    peer = {p["videos"]: p for p in points if p.get("stage") == "train" and p["head"] == default}
    return [
        {"head": p["head"], "videos": p["videos"],
         "epoch_over_default_head": round(p["epoch_seconds"][0] / peer[p["videos"]]["epoch_seconds"][0], 1),
         "cpu_over_default_head": round(
             p["training_passes"][0]["cpu_seconds"] / peer[p["videos"]]["training_passes"][0]["cpu_seconds"], 1)}
        for p in points
        if p.get("stage") == "train" and p["head"] != default and p["videos"] in peer
    ]  # fmt: skip


def streaming(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each train point's memory against its inputs: the trainer's decoded-input cache
    within its bound, and, where the inputs outgrow that bound, peak RSS below them."""
    checks = []
    for p in points:
        if p.get("stage") != "train":
            continue
        outgrown = p["input_bytes"] > p["cache_bound_bytes"]
        checks.append({
            "head": p["head"], "videos": p["videos"], "input_bytes": p["input_bytes"],
            "peak_rss_bytes": p["peak_rss_bytes"], "most_cached_bytes": p["most_cached_bytes"],
            "largest_batch_bytes": p["largest_batch_bytes"],
            "cache_within_bound": p["most_cached_bytes"] <= p["cache_bound_bytes"],
            "rss_below_inputs": p["peak_rss_bytes"] < p["input_bytes"] if outgrown else None,
        })  # fmt: skip
    return checks


def budgets(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each train point's peak RSS against the memory budget its micro-batch was sized for."""
    return [
        {"head": p["head"], "videos": p["videos"], "batch_size": p["batch_size"],
         "micro_batch": p["micro_batch"]["size"], "memory_budget_bytes": p["memory_budget_bytes"],
         "peak_rss_bytes": p["peak_rss_bytes"], "within_budget": p["peak_rss_bytes"] <= p["memory_budget_bytes"]}
        for p in points
        if p.get("stage") == "train" and "memory_budget_bytes" in p
    ]  # fmt: skip


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
    parser.add_argument(
        "--head", nargs="+", default=[None],
        help="registered heads of the train points, each at its defaults (default: vpipe train's)",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch threads of the train points (default: every core; 1 keeps a shared machine's figures steady)",
    )  # fmt: skip
    parser.add_argument(
        "--batch-size", nargs="+", default=[], metavar="HEAD=N",
        help="a head's batch size instead of the trainer's default, where a default batch outgrows memory",
    )  # fmt: skip
    parser.add_argument(
        "--memory-budget", type=float, default=None, metavar="GIB",
        help="the trainer's memory budget, which sizes its micro-batches (default: the trainer's)",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS / "scale.json")
    args = parser.parse_args()
    batch_sizes = {head: int(n) for head, n in (pair.split("=") for pair in args.batch_size)}
    options = {
        "methods": args.methods.split(","),
        "pca": args.pca if args.pca == "auto" else int(args.pca),
        "baseline": not args.no_baseline,
    }
    if args.threads:
        options["threads"] = args.threads
    if args.memory_budget:
        options["memory_budget"] = args.memory_budget
    from vpipe.train import TrainConfig

    default_head = TrainConfig.head
    heads = [head or default_head for head in args.head]
    work = [("encode", k, size, None) for k in args.clusters for size in args.sizes if "encode" in args.stages]
    work += [
        (stage, args.epochs, size, head)
        for head in heads
        for size in args.sizes
        for stage in ("train", "report")
        if stage in args.stages
    ]  # fmt: skip
    full = DatasetWorkspace(args.root, "ucf101like")
    if not full.manifest_path.exists() and ("encode" in args.stages or set(heads) - set(MAP_CACHES)):
        started = time.perf_counter()
        build_ucf101_like_cache(args.root)
        print(f"built the cache in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    caches = {head: _map_workspace(args.root, head, max(args.sizes)) for head in heads if head in MAP_CACHES}
    points = []
    args.output.parent.mkdir(parents=True, exist_ok=True)
    for stage, number, size, head in work:
        source = caches.get(head, full)
        videos = len(pd.read_parquet(source.manifest_path))
        ws = source if size >= videos else subset_workspace(source, size)
        mine = {**options, "head": head, "batch_size": batch_sizes.get(head)} if head else options
        points.append(measure(args.root, ws.dataset, number, mine, stage))
        print(json.dumps(points[-1]), file=sys.stderr)
        machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": load_average()}
        result = {
            "machine": machine, "points": points, "scaling": scaling(points), "goals": goals(points),
            "extrapolated": extrapolated(points), "against_default_head": against_default_head(points, default_head),
            "streaming": streaming(points), "budgets": budgets(points),
        }  # fmt: skip
        args.output.write_text(json.dumps(result, indent=2))
    summary = ("scaling", "goals", "extrapolated", "against_default_head", "streaming", "budgets")
    print(json.dumps({key: result[key] for key in summary}, indent=2))


def _map_workspace(root: Path, head: str, videos: int) -> DatasetWorkspace:
    """The head's map cache under ``root``, built (or rebuilt larger) to hold ``videos``."""
    ws = DatasetWorkspace(root, f"maps-{head}")
    if ws.manifest_path.exists() and len(pd.read_parquet(ws.manifest_path)) >= videos:
        return ws
    started = time.perf_counter()
    ws = build_map_cache(root, head, videos)
    print(f"built the {head} cache of {videos} videos in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return ws


if __name__ == "__main__":
    main()
