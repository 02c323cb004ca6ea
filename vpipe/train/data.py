"""Which videos a run trains, validates and tests on, and how they reach the model.

The manifest decides membership: ``train`` videos are split once more into a fit part
and a validation part (stratified per class and seeded, so early stopping never looks at
the test split); the manifest's own ``val`` videos, where a dataset has them, join the
validation part. ``test`` videos are scored only after training. Only videos whose probe
succeeded and whose features hold view 0 take part; the others are counted, not hidden.

Training reads every cached view of a fit video (augmented crops and flips act as
augmentation); validation and test read view 0, the centre view, as at test time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from vpipe.errors import ConfigError, StageError
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.store import FeatureSet, collate_padded


@dataclass(frozen=True)
class Splits:
    """Video ids per role, labels for all of them, and the class names by label."""

    train: list[str]
    val: list[str]
    test: list[str]
    labels: dict[str, int]
    class_names: list[str]
    without_features: int

    def to_dict(self) -> dict[str, object]:
        return {
            "train": self.train,
            "val": self.val,
            "test": self.test,
            "class_names": self.class_names,
            "labels": {video: self.labels[video] for video in (*self.train, *self.val, *self.test)},
            "videos_without_features": self.without_features,
        }


def step_dim(features: FeatureSet, layer: str) -> int:
    """Size D of one time step of ``layer``, whose clip rows must be ``(τ, D)`` or ``(D,)``.

    τ may differ between shards (samplers adapt it to the video), D may not: a head has
    one input size.
    """
    if layer not in features.layers:
        raise ConfigError(f"{features.directory} has no layer {layer!r}; it has {features.layers}: pass --layer")
    shapes = [json.loads(spec)[layer]["shape"] for spec in features.index["layers"].unique()]
    if any(len(shape) not in (1, 2) for shape in shapes):
        raise ConfigError(
            f"layer {layer!r} of {features.directory} has clip shapes {shapes}; a sequence head needs per-step "
            f"vectors (τ, D) or (D,): choose a pooled layer with --layer"
        )
    dims = {shape[-1] for shape in shapes}
    if len(dims) != 1:
        raise StageError(f"layer {layer!r} of {features.directory} mixes step sizes {sorted(dims)}; re-extract it")
    return int(dims.pop())


def class_names(manifest: pd.DataFrame) -> list[str]:
    """Names by label 0..max(label); a label that never occurs is named by its number."""
    names = {int(label): str(name) for label, name in zip(manifest["label"], manifest["label_name"])}
    return [names.get(label, str(label)) for label in range(max(names) + 1)]


def carve_validation(ids: list[str], labels: dict[str, int], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Split ``ids`` into (fit, val), ``fraction`` of every class to val, seeded.

    Each class with at least two videos gives at least one to validation and keeps at
    least one, so tiny classes are represented in both; a class of one stays in fit.
    """
    if fraction == 0.0:
        return list(ids), []
    rng = np.random.default_rng(seed)
    fit, val = [], []
    by_class: dict[int, list[str]] = {}
    for video_id in ids:
        by_class.setdefault(labels[video_id], []).append(video_id)
    for label in sorted(by_class):
        members = sorted(by_class[label])
        order = rng.permutation(len(members))
        n_val = min(max(int(round(fraction * len(members))), 1), len(members) - 1)
        chosen = {members[i] for i in order[:n_val]}
        fit += [v for v in members if v not in chosen]
        val += [v for v in members if v in chosen]
    return fit, val


def make_splits(ws: DatasetWorkspace, features: FeatureSet, val_fraction: float, seed: int) -> Splits:
    """Roles of the manifest's videos for one run (see the module docstring)."""
    manifest = ws.read_manifest()
    ok = manifest[manifest["status"] == "ok"]
    if ok.empty:
        raise StageError(f"no video of dataset {ws.dataset!r} was probed successfully; see its manifest")
    with_view0 = set(features.index.loc[features.index["view"] == 0, "video_id"])
    present = ok[ok["video_id"].isin(with_view0)]
    labels = {str(v): int(label) for v, label in zip(present["video_id"], present["label"])}
    role = dict(zip(present["video_id"], present["split"]))
    train = sorted(v for v, s in role.items() if s == "train")
    if not train:
        raise StageError(
            f"no train video of dataset {ws.dataset!r} has {Path(features.directory).name} features: "
            f"check the manifest's split column or run `vpipe extract --dataset {ws.dataset}`"
        )
    fit, val = carve_validation(train, labels, val_fraction, seed)
    val = sorted(val + [v for v, s in role.items() if s == "val"])
    if not val:
        raise ConfigError(
            "no validation videos: the manifest has no val split, so --val-fraction must be above 0 "
            "(early stopping needs them)"
        )
    return Splits(
        train=fit,
        val=val,
        test=sorted(v for v, s in role.items() if s == "test"),
        labels=labels,
        class_names=class_names(ok),
        without_features=int(len(ok) - len(present)),
    )


def loader(
    features: FeatureSet,
    layer: str,
    video_ids: list[str],
    labels: dict[str, int],
    *,
    batch_size: int,
    train: bool,
    seed: int = 0,
) -> DataLoader:
    """Padded batches of ``(x, lengths, labels)``; shuffled and all views when ``train``.

    Batches are read in the main process: sequences are a few KB, an epoch of them is
    one h5py row read each, and worker processes would cost more than they save on
    the small CPU machines this runs on.
    """
    dataset = features.torch_dataset(layer, video_ids=video_ids, views="all" if train else 0, labels=labels)
    generator = torch.Generator().manual_seed(seed) if train else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        generator=generator,
        collate_fn=collate_padded,
        num_workers=0,
    )
