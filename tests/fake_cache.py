"""A fake feature cache for training tests: 4 classes that only a temporal model separates.

4 classes × 10 videos (7 train, 3 test) of 1–2 clips with τ = 6..10 steps of D = 32
features. Classes 0 and 1 differ in what their steps look like; classes 2 and 3 are
made of the same two kinds of step in opposite temporal order (P then Q vs Q then P),
so any order-less pooling of the raw steps is at chance on them and only a temporal
model separates all four. Train videos have a second, noisier cached view.
``make_workspace(root, features=("li3d-rgb", "li3d-flow"))`` writes the same videos
into several feature sets (different noise per set), as rgb and flow streams;
``provenance`` replaces the shards' ``{"backbone": "fake"}``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.store import ShardWriter, shard_name, write_index

D = 32
FEATURES = "li3d-rgb"
CLASS_NAMES = ["Appear", "Vanish", "PThenQ", "QThenP"]


def _steps(label: int, tau: int, modes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One video's sequence of ``tau`` steps for ``label`` (see the module docstring)."""
    noise = rng.normal(scale=0.6, size=(tau, D))
    if label < 2:
        return modes[label] + noise
    half = tau // 2
    first, second = (modes[2], modes[3]) if label == 2 else (modes[3], modes[2])
    return np.concatenate([np.repeat(first[None], half, 0), np.repeat(second[None], tau - half, 0)]) + noise


def make_workspace(
    root: Path,
    *,
    seed: int = 0,
    classes: int = 4,
    videos: int = 10,
    test: int = 3,
    features: tuple[str, ...] = (FEATURES,),
    provenance: dict | None = None,
) -> DatasetWorkspace:
    rng = np.random.default_rng(seed)
    modes = rng.normal(scale=2.0, size=(4, D))
    ws = DatasetWorkspace(root, "fake")
    rows: dict[str, list] = {name: [] for name in features}
    manifest = []
    for label in range(classes):
        for i in range(videos):
            video_id = f"{CLASS_NAMES[label]}_{i:02d}"
            split = "test" if i >= videos - test else "train"
            tau, clips = int(rng.integers(6, 11)), int(rng.integers(1, 3))
            views = 2 if split == "train" else 1
            for name in features:
                directory = ws.features_dir(name)
                attrs = provenance or {"backbone": "fake"}
                with ShardWriter(directory / shard_name("extract", video_id), attrs=attrs) as writer:
                    for view in range(views):
                        jitter = rng.normal(scale=0.3 * view, size=(tau * clips, D))
                        sequence = _steps(label, tau * clips, modes, rng) + jitter
                        for clip in range(clips):
                            writer.add(video_id, clip, view, {"pool": sequence[clip * tau : (clip + 1) * tau]})
                rows[name] += writer.rows
            manifest.append(
                {"video_id": video_id, "label": label, "label_name": CLASS_NAMES[label], "split": split, "status": "ok"}
            )
    for name in features:
        write_index(ws.features_dir(name), rows[name])
    pd.DataFrame(manifest).to_parquet(ws.manifest_path)
    return ws
