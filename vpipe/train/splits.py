"""Which videos a run fits, validates and tests on: the manifest's split, carved once more.

The manifest decides membership: ``train`` videos are split once more into a fit part
and a validation part (stratified per class and seeded, so early stopping never looks at
the test split); the manifest's own ``val`` videos, where a dataset has them, join the
validation part. ``test`` videos are scored only after training. Only videos that probed
``ok`` and have view 0 in every feature set the run reads take part; the others are
counted, not hidden.

The split is part of a run's fingerprint, so ``vpipe status`` computes it too. It is
therefore worked out from plain columns (the manifest's, and each feature set's view-0
video ids), with numpy and pyarrow alone: the trainer passes the ids of the indexes it
has open, status those it read as columns (:mod:`vpipe.train.identity`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from vpipe.errors import ConfigError, StageError
from vpipe.pipeline.workspace import DatasetWorkspace


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


def class_names(labels: Iterable[int], names: Iterable[str]) -> list[str]:
    """Names by label 0..max(label); a label that never occurs is named by its number."""
    by_label = {int(label): str(name) for label, name in zip(labels, names)}
    return [by_label.get(label, str(label)) for label in range(max(by_label) + 1)]


def ok_class_names(ws: DatasetWorkspace) -> list[str]:
    """:func:`class_names` of every video that probed ok, with or without features."""
    manifest = ws.read_manifest_columns(["label", "label_name", "status"])
    ok = manifest.filter(pc.equal(manifest["status"], "ok"))
    return class_names(ok["label"].to_pylist(), ok["label_name"].to_pylist())


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


def assign_splits(ws: DatasetWorkspace, view0: Mapping[str, Iterable[str]], val_fraction: float, seed: int) -> Splits:
    """Roles of the manifest's videos for one run; ``view0`` maps each feature set the run
    reads to the ids of the videos that have view 0 in it (see the module docstring)."""
    rows, missing = ws.usable_video_columns(view0.values())
    if rows.num_rows == 0 and missing == 0:
        raise StageError(f"no video of dataset {ws.dataset!r} was probed successfully; see its manifest")
    present = rows.to_pydict()
    labels = {str(v): int(label) for v, label in zip(present["video_id"], present["label"])}
    role = dict(zip(present["video_id"], present["split"]))
    train = sorted(v for v, s in role.items() if s == "train")
    if not train:
        raise StageError(
            f"no train video of dataset {ws.dataset!r} has features in all of {', '.join(view0)}: "
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
        class_names=ok_class_names(ws),
        without_features=missing,
    )
