"""Cost and worth of the dense HOG / HOF / MBH descriptors (backbone ``hoghofmbh``).

Cost: clips/s of the descriptors against clips/s of the TV-L1 flow they read, on the
same synthetic clips (16 frames of 112 x 112 moving texture), on CPU. The flow side
is the flow stage's own computation (``tvl1`` with default parameters in the stage's
CPU batches of about 100k pixels, then uint8 coding); the descriptor side is the
extract stage's (``run_model``: uint8 frames and flow codes in, both layers out).
Wall and process-CPU seconds are both recorded, since a shared machine inflates
wall time but hardly CPU time.

Worth (``--workspace``): test accuracy of a logistic regression on each feature set
of a workspace where ``vpipe run`` and ``vpipe extract --backbone hoghofmbh`` ran,
once on the concatenated per-step ``pool`` vectors (temporal order kept) and once on
their mean, so the descriptors and the random LI3D features meet the same classifier.

    python bench/descriptors.py --clips 4 --out bench/results/descriptors.json
    python bench/descriptors.py --clips 0 --workspace /tmp/ws --out bench/results/descriptors-accuracy.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model, load_average  # bench/machine.py, beside this script

from vpipe.extract.features import run_model
from vpipe.extract.inputs import LoadedClip
from vpipe.flow.compute import CPU_BATCH_PIXELS
from vpipe.flow.quantize import quantize_flow
from vpipe.flow.tvl1 import tvl1
from vpipe.models import backbone

FRAMES, SIZE = 16, 112


def moving_clips(count: int, seed: int = 0) -> np.ndarray:
    """(count, FRAMES + 1, SIZE, SIZE, 3) uint8: smooth textures drifting 1-3 px per frame."""
    rng = np.random.default_rng(seed)
    span = SIZE + 3 * (FRAMES + 1) + 8
    clips = []
    for i in range(count):
        noise = torch.from_numpy(rng.uniform(0, 255, (1, 3, span, span)).astype(np.float32))
        smooth = torch.nn.functional.avg_pool2d(noise, 5, 1)[0].permute(1, 2, 0).numpy()
        dx, dy = 1 + i % 3, (i % 2) * 2 - 1
        rows = [FRAMES + 2 + dy * t for t in range(FRAMES + 1)]
        frames = [smooth[r : r + SIZE, dx * t : dx * t + SIZE] for t, r in enumerate(rows)]
        clips.append(np.stack(frames))
    return np.clip(np.stack(clips), 0, 255).astype(np.uint8)


def flow_codes(clips: np.ndarray) -> tuple[np.ndarray, float, float]:
    """uint8 flow (count, FRAMES, 2, h, w) as the flow stage computes it; wall and CPU seconds."""
    prev = torch.from_numpy(clips[:, :-1].reshape(-1, SIZE, SIZE, 3))
    nxt = torch.from_numpy(clips[:, 1:].reshape(-1, SIZE, SIZE, 3))
    batch = max(1, CPU_BATCH_PIXELS // (SIZE * SIZE))
    wall, cpu = time.perf_counter(), time.process_time()
    codes = [quantize_flow(tvl1(prev[i : i + batch], nxt[i : i + batch])) for i in range(0, len(prev), batch)]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return torch.cat(codes).numpy().reshape(len(clips), FRAMES, 2, SIZE, SIZE), wall, cpu


def descriptor_seconds(clips: np.ndarray, codes: np.ndarray, repeats: int, batch: int) -> tuple[float, float]:
    """Wall and CPU seconds per pass of the extract stage's model step over every clip."""
    model = backbone("hoghofmbh")
    loaded = [
        LoadedClip(i, 0, np.concatenate([clip[:-1], field.transpose(0, 2, 3, 1)], -1))
        for i, (clip, field) in enumerate(zip(clips, codes))
    ]
    run_model(model, loaded[:batch], torch.device("cpu"))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        for i in range(0, len(loaded), batch):
            run_model(model, loaded[i : i + batch], torch.device("cpu"))
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def cost(count: int, threads: list[int], repeats: int, batch: int) -> list[dict]:
    clips = moving_clips(count)
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        codes, flow_wall, flow_cpu = flow_codes(clips)
        desc_wall, desc_cpu = descriptor_seconds(clips, codes, repeats, batch)
        rows.append(
            {
                "threads": n,
                "clips": count,
                "flow_clips_per_s": count / flow_wall,
                "flow_cpu_s_per_clip": flow_cpu / count,
                "descriptor_clips_per_s": count / desc_wall,
                "descriptor_cpu_s_per_clip": desc_cpu / count,
                "descriptor_over_flow_wall": desc_wall / flow_wall,
                "descriptor_over_flow_cpu": desc_cpu / flow_cpu,
            }
        )
        print(
            f"threads {n}: flow {count / flow_wall:6.2f} clips/s, descriptors {count / desc_wall:7.2f} clips/s; "
            f"descriptors cost {100 * desc_wall / flow_wall:.1f} % of the flow (wall), "
            f"{100 * desc_cpu / flow_cpu:.1f} % (CPU)"
        )
    return rows


def video_matrix(directory: Path, video_ids: list[str]) -> np.ndarray:
    """(videos, steps, D): each video's view-0 ``pool`` sequence, cut to the shortest."""
    from vpipe.store.reader import FeatureSet

    with FeatureSet.open(directory) as features:
        sequences = [features.sequence(video_id, layer="pool", view=0).astype(np.float32) for video_id in video_ids]
    steps = min(len(s) for s in sequences)
    return np.stack([s[:steps] for s in sequences])


def accuracy(workspace: Path, dataset: str, feature_sets: list[str]) -> list[dict]:
    """Logistic-regression test accuracy per feature set, ordered steps and mean-pooled."""
    import pandas as pd
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = workspace / dataset
    manifest = pd.read_parquet(root / "manifest.parquet")
    manifest = manifest[manifest["status"] == "ok"]
    rows = []
    for name in feature_sets:
        directory = root / "features" / name
        if not (directory / "index.parquet").exists():
            print(f"{name}: not extracted in {root}, skipped")
            continue
        ids = {split: manifest.loc[manifest["split"] == split, "video_id"].tolist() for split in ("train", "test")}
        labels = {split: manifest.set_index("video_id").loc[ids[split], "label"].to_numpy() for split in ids}
        matrices = {split: video_matrix(directory, ids[split]) for split in ids}
        steps = min(m.shape[1] for m in matrices.values())
        for pooling in ("steps", "mean"):
            design = {
                split: m[:, :steps].reshape(len(m), -1) if pooling == "steps" else m[:, :steps].mean(1)
                for split, m in matrices.items()
            }
            classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
            classifier.fit(design["train"], labels["train"])
            score = float((classifier.predict(design["test"]) == labels["test"]).mean())
            rows.append({"features": name, "pooling": pooling, "steps": steps,
                         "dim": int(design["test"].shape[1]), "test_accuracy": score,
                         "train": len(ids["train"]), "test": len(ids["test"])})
            print(f"{name:<14} {pooling:<5} ({steps} steps, {rows[-1]['dim']:>5}-d): test accuracy {score:.3f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=4, help="clips timed for the cost; 0 skips it")
    parser.add_argument("--threads", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8, help="clips per descriptor forward (the extract default)")
    parser.add_argument("--workspace", type=Path, help="also score feature sets of this workspace")
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--features", nargs="+", default=["hoghofmbh", "li3d-rgb", "li3d-flow"])
    parser.add_argument("--out", type=Path, default=Path("bench/results/descriptors.json"))
    args = parser.parse_args()
    result: dict = {"machine": {"cpu": cpu_model(), "load_average_before": load_average()}}
    if args.clips:
        result["cost"] = cost(args.clips, args.threads, args.repeats, args.batch)
    if args.workspace:
        result["accuracy"] = accuracy(args.workspace, args.dataset, args.features)
    result["machine"]["load_average_after"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
