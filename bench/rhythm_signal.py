"""Where the rhythm of a motion is lost: in the flow, in the descriptors, or in the head.

On the synthetic set's rhythm family (``BounceSlow`` / ``BounceMedium`` / ``BounceFast``:
one disk bouncing with a period of about 24, 12 or 6 frames), the temporal heads score
about half right while direction and order are learnt (bench/ablation.md). This bench
asks, with one linear probe per stage and the same train/test split, how much of the
rhythm each stage still carries:

1. **flow**: per clip frame, the mean vertical flow of the pixels moving faster than
   1 px/frame after the frame's median flow (the camera) is removed: the object's
   vertical velocity; its normalised magnitude spectrum over each clip, and its mean
   speed;
2. **descriptors**: per ``pool`` step of ``hoghofmbh``, HOF's downward minus upward
   share (the middle temporal cell, summed over the spatial cells, the two diagonal
   neighbours of each direction at half weight): the same velocity sign as the
   descriptor saw it; its normalised magnitude spectrum over each clip, and HOF's
   moving share;
3. **head**: the trained runs named by ``--runs`` (e.g. the ablation's BiLSTM rows):
   their rhythm-family accuracy among all classes, and the share right among the test
   videos they put in some rhythm class (a like-for-like figure for the 3-way probes).

Probes: standardised features, multinomial logistic regression (scikit-learn), fit on
the dataset's train split, scored on its test split; chance is 1/3. A probe far above
the head means the signal reaches the head and is not learnt there.

    python bench/rhythm_signal.py --workspace /tmp/syn40 --runs "abl-bilstm-avg-seg6-s?"

Writes JSON (``--out``, default bench/results/rhythm_signal.json).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from vpipe.data.synthetic import FAMILIES
from vpipe.flow.quantize import decode_flow
from vpipe.models.backbones.hoghofmbh import CELLS, DESCRIPTORS, NT, NX, NY, ORIENTATIONS
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.store.reader import FeatureSet
from machine import cpu_model, emit_result, load_average  # bench/machine.py, beside this script

RHYTHM = FAMILIES["rhythm"]
#: Flow faster than this (px/frame, after removing the median) counts as the object.
OBJECT_SPEED = 1.0
#: HOF bins (centred on b * 45 degrees, image y pointing down) of downward and upward flow.
DOWN, UP = 2, 6


def spectrum(series: np.ndarray) -> np.ndarray:
    """Magnitude spectrum of a series without its mean, normalised to sum 1: the share
    of each temporal frequency, whatever the amplitude."""
    magnitude = np.abs(np.fft.rfft(series - series.mean()))
    return magnitude / max(float(magnitude.sum()), 1e-9)


def flow_features(clips: np.ndarray) -> np.ndarray:
    """(clips, T, 2, H, W) flow in px -> the object's vertical-velocity spectrum and speed, clip-averaged."""
    out = []
    for clip in clips:
        frames = len(clip)
        clip = clip - np.median(clip.reshape(frames, 2, -1), axis=2)[:, :, None, None]
        speed = np.hypot(clip[:, 0], clip[:, 1]).reshape(frames, -1)
        moving = speed > OBJECT_SPEED
        vy = (clip[:, 1].reshape(frames, -1) * moving).sum(1) / np.maximum(moving.sum(1), 1)
        out.append(np.concatenate([spectrum(vy), [np.abs(vy).mean()]]))
    return np.mean(out, axis=0)


def hof_block(steps: np.ndarray) -> np.ndarray:
    """(..., D) ``pool`` steps -> (..., NT, NY, NX, bins) HOF shares (the square of RootSIFT)."""
    names = [name for name, _ in DESCRIPTORS]
    start = sum(CELLS * bins for _, bins in DESCRIPTORS[: names.index("hof")])
    bins = dict(DESCRIPTORS)["hof"]
    return steps[..., start : start + CELLS * bins].reshape(*steps.shape[:-1], NT, NY, NX, bins) ** 2


def descriptor_features(clips: np.ndarray) -> np.ndarray:
    """(clips, steps, D) descriptors -> HOF's vertical-balance spectrum and moving share, clip-averaged."""
    out = []
    for clip in clips:
        hof = hof_block(clip.astype(np.float64))[:, NT // 2]
        down = hof[..., DOWN] + 0.5 * (hof[..., DOWN - 1] + hof[..., DOWN + 1])
        up = hof[..., UP] + 0.5 * (hof[..., UP - 1] + hof[..., UP + 1])
        balance = (down - up).sum((1, 2))
        moving = 1.0 - hof[..., ORIENTATIONS].sum((1, 2))
        out.append(np.concatenate([spectrum(balance), [moving.mean()]]))
    return np.mean(out, axis=0)


def probe(features: np.ndarray, labels: np.ndarray, train: np.ndarray) -> dict[str, Any]:
    """Test accuracy of a standardised logistic regression fit on the train rows."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    model.fit(features[train], labels[train])
    predicted = model.predict(features[~train])
    return {"accuracy": float((predicted == labels[~train]).mean()), "test_videos": int((~train).sum()),
            "train_videos": int(train.sum()), "dims": int(features.shape[1])}  # fmt: skip


def head_scores(ws: DatasetWorkspace, pattern: str) -> list[dict[str, Any]]:
    """Rhythm accuracy of each finished run matching ``pattern``: among all classes, and
    among the test videos it put in a rhythm class."""
    scores = []
    for run in sorted(ws.runs_dir.iterdir()):
        metrics_path = run / "metrics.json"
        if not fnmatch.fnmatch(run.name, pattern) or not metrics_path.is_file():
            continue
        metrics = json.loads(metrics_path.read_text())
        names = [row["class"] for row in metrics["per_class"]]
        confusion = np.asarray(metrics["confusion"])
        rows = [names.index(name) for name in RHYTHM]
        right = sum(int(confusion[i, i]) for i in rows)
        within = int(confusion[np.ix_(rows, rows)].sum())
        scores.append({"run_id": run.name, "accuracy": right / int(confusion[rows].sum()),
                       "accuracy_within_rhythm": right / within if within else None,
                       "predicted_rhythm_share": within / int(confusion[rows].sum())})  # fmt: skip
    return scores


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--plan", default="li3d", help="the flow cache's plan")
    parser.add_argument("--features", default="hoghofmbh")
    parser.add_argument("--runs", default="abl-bilstm-avg-seg6-s?", help="glob of run ids whose rhythm scores to report")
    parser.add_argument("--out", type=Path, default=Path("bench/results/rhythm_signal.json"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    ws = DatasetWorkspace(args.workspace.resolve(), args.dataset)
    manifest = ws.read_manifest()
    manifest = manifest[manifest["label_name"].isin(RHYTHM)]
    labels = manifest["label_name"].to_numpy()
    train = (manifest["split"] == "train").to_numpy()
    videos = list(manifest["video_id"])
    with FeatureSet.open(ws.flow_dir(args.plan)) as flow:
        from_flow = np.stack([flow_features(decode_flow(flow.clips(v, layer="flow")).numpy()) for v in videos])
    with FeatureSet.open(ws.features_dir(args.features)) as descriptors:
        from_descriptors = np.stack([descriptor_features(descriptors.clips(v, layer="pool")) for v in videos])
    heads = head_scores(ws, args.runs)
    result = {
        "benchmark": "rhythm_signal",
        "machine": {"cpu": cpu_model(), "load_average": load_average()},
        "workspace": str(ws.root),
        "chance": 1 / len(RHYTHM),
        "flow_probe": probe(from_flow, labels, train),
        "descriptor_probe": probe(from_descriptors, labels, train),
        "heads": heads,
        "head_mean": {
            key: float(np.mean([h[key] for h in heads])) for key in ("accuracy", "accuracy_within_rhythm")
        } if heads else None,
        "wall_seconds": time.perf_counter() - start,
    }
    emit_result(result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
