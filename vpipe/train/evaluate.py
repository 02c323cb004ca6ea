"""Rebuilding a finished run's model and re-scoring its test split.

A run directory is self-sufficient: ``config.json`` names the options, the features and
the exact test videos with their labels, and ``checkpoint.pt`` holds the weights. So
``evaluate`` needs neither the manifest nor the codebook, and reproduces ``metrics.json``
as long as the features are unchanged and it runs on the same kind of device (CUDA
autocast rounds differently from the CPU); when the features' index differs from the one
the run was trained on it still scores, but says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader

from vpipe.models.heads.bilstm import BiLSTMSoftAggHead
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.store import FeatureSet
from vpipe.train import runs
from vpipe.train.config import TrainConfig
from vpipe.train.data import loader
from vpipe.device import resolve_device
from vpipe.train.scoring import amp_dtype, build_head, test_metrics

log = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    """A finished run with its model rebuilt on ``device`` and its features open."""

    run: runs.StoredRun
    config: TrainConfig
    model: BiLSTMSoftAggHead
    features: FeatureSet
    device: torch.device
    dtype: torch.dtype | None

    @property
    def class_names(self) -> list[str]:
        return list(self.run.config["data"]["class_names"])

    @property
    def labels(self) -> dict[str, int]:
        return {video: int(label) for video, label in self.run.config["data"]["labels"].items()}

    def test_loader(self) -> DataLoader:
        """The test videos, view 0, in the batches training scored them in."""
        return loader(
            self.features,
            self.config.layer,
            list(self.run.config["data"]["test"]),
            self.labels,
            batch_size=self.config.batch_size,
            train=False,
        )

    def close(self) -> None:
        self.features.close()


def load(ws: DatasetWorkspace, run_id: str, *, device: str = "auto") -> LoadedRun:
    """Rebuild run ``run_id``'s model from its config and load its best checkpoint."""
    run = runs.load_run(ws, run_id)
    config = TrainConfig.from_dict(run.config["train"])
    features = ws.open_features(config.features)
    if features.index_sha256 != run.config["features"]["index_sha256"]:
        log.warning(
            "features %s changed since run %s was trained; its metrics may differ from metrics.json",
            config.features,
            run_id,
        )
    target = resolve_device(device)
    shape = run.config["model"]
    model = build_head(config, int(shape["input_dim"]), int(shape["num_classes"]))
    checkpoint = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(checkpoint["state_dict"])
    return LoadedRun(run, config, model.to(target).eval(), features, target, amp_dtype(target, config.amp))


def evaluate(ws: DatasetWorkspace, run_id: str, *, device: str = "auto") -> dict[str, Any]:
    """Re-score run ``run_id`` on its test split; write and return the metrics.

    The result is written to ``evaluation.json`` next to the run's ``metrics.json``, which
    stays the record of training; the two agree on every key except
    :data:`vpipe.train.metrics.TIMING_KEYS`.
    """
    loaded = load(ws, run_id, device=device)
    try:
        metrics = test_metrics(loaded.model, loaded.test_loader(), loaded.device, loaded.dtype, loaded.class_names)
    finally:
        loaded.close()
    runs.write_json(loaded.run.directory / runs.EVALUATION_FILE, metrics)
    return metrics
