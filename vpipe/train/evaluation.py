"""Rebuilding a finished run's model, re-scoring its test split, and embedding videos.

A run directory is self-sufficient: ``config.json`` names the options, the inputs, the
exact test videos with their labels, and the per-entry shapes the model was built for;
``checkpoint.pt`` holds the weights. So ``evaluate`` needs neither the manifest nor a
codebook, and reproduces ``metrics.json`` as long as the features are unchanged and it
runs on the same kind of device (CUDA autocast rounds differently from the CPU); when a
feature set's index differs from the one the run was trained on it still scores, but
says so.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from vpipe.device import resolve_device
from vpipe.errors import StageError
from vpipe.models.heads.registry import Head, HeadInput
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.train import runs
from vpipe.train.config import TrainConfig
from vpipe.train.data import InputReader, assemble, batches_of, loader
from vpipe.train.model import build_model
from vpipe.train.scoring import amp_dtype, predict, test_metrics

log = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    """A finished run with its model rebuilt on ``device`` and its inputs open."""

    run: runs.RunRecord
    config: TrainConfig
    model: Head
    reader: InputReader
    device: torch.device
    dtype: torch.dtype | None

    @property
    def class_names(self) -> list[str]:
        return self.run.config.class_names

    @property
    def labels(self) -> dict[str, int]:
        return self.run.config.labels

    def loader(self, video_ids: Sequence[str], labels: dict[str, int] | None = None) -> DataLoader:
        """View 0 of ``video_ids`` in the batches training scored in (labels -1 when not given)."""
        cut = self.run.config.environment.get("micro_batch") or {}
        return loader(
            self.reader, list(video_ids), labels, batch_size=self.config.batch_size, train=False, micro_batch=cut.get("size")
        )

    def test_loader(self) -> DataLoader:
        """The test videos, view 0, in the batches training scored them in."""
        return self.loader(self.run.config.test_videos, self.labels)

    def close(self) -> None:
        self.reader.close()


def load(ws: DatasetWorkspace, run: runs.RunRecord, *, device: str = "auto") -> LoadedRun:
    """Rebuild a run's model from its record and load its best checkpoint.

    Features re-extracted since the run was trained are only a warning while their entries
    keep the run's shapes; with other shapes (a backbone version that changed its layout) the run
    cannot read them, which is one line asking to retrain it.
    """
    run_id = run.run_id
    if run.config.inputs is None:
        raise StageError(f"run {run_id!r} lists no inputs in its config; it was trained by an older vpipe: retrain it")
    if not run.checkpoint.is_file():
        raise StageError(f"run {run_id!r} finished but its checkpoint {run.checkpoint} is gone: `vpipe verify` lists such runs")
    config = TrainConfig.from_dict(run.config.train)
    specs = [HeadInput(spec["role"], tuple(spec["features"]), spec["layer"], spec["layout"]) for spec in run.config.inputs]
    reader = InputReader(ws, specs)
    try:
        for name, sha in reader.index_sha256().items():
            if sha != run.config.features[name]["index_sha256"]:
                log.warning("features %s changed since run %s was trained; its metrics may differ", name, run_id)
        target = resolve_device(device)
        shape = run.config.model
        shapes = {role: tuple(s) for role, s in shape["shapes"].items()}
        if (current := reader.shapes()) != shapes:
            raise StageError(
                f"run {run_id!r} was trained on inputs of shape {shapes}, but its features now give {current}: "
                f"they were re-extracted with another layout; train the run again (`vpipe train`)"
            )
        model = build_model(config, shapes, int(shape["num_classes"]))
        checkpoint = torch.load(run.checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(checkpoint["state_dict"])
    except Exception:
        reader.close()
        raise
    return LoadedRun(run, config, model.to(target).eval(), reader, target, amp_dtype(target, config.amp))


def evaluate(ws: DatasetWorkspace, run: str | runs.RunRecord, *, device: str = "auto") -> dict[str, Any]:
    """Re-score a run (its id, or its record when read already) on its test split; write and
    return the metrics.

    The result is written to ``evaluation.json`` next to the run's ``metrics.json``, which
    stays the record of training; the two agree on every key except
    :data:`vpipe.train.metrics.TIMING_KEYS`.
    """
    loaded = load(ws, runs.load_run(ws, run) if isinstance(run, str) else run, device=device)
    try:
        metrics = test_metrics(loaded.model, loaded.test_loader(), loaded.device, loaded.dtype, loaded.class_names)
    finally:
        loaded.close()
    runs.write_json(loaded.run.directory / runs.EVALUATION_FILE, metrics)
    return metrics


def embed_videos(ws: DatasetWorkspace, run_id: str, video_ids: Sequence[str], *, device: str = "auto") -> np.ndarray:
    """The run's pre-classifier embeddings of view 0 of ``video_ids``: ``(n, num_features)`` float32."""
    loaded = load(ws, runs.load_run(ws, run_id), device=device)
    try:
        scores = predict(loaded.model, loaded.loader(video_ids), loaded.device, loaded.dtype, embeddings=True)
    finally:
        loaded.close()
    return scores.embeddings.astype(np.float32)


class BeforeAndAfter(NamedTuple):
    """Test videos' features before and after the head aggregates them (the report's t-SNE)."""

    #: ``(videos, channels)``: the run's first input, averaged over every axis but the channels.
    raw: np.ndarray
    #: ``(videos, num_features)``: the head's pre-classifier embedding.
    embedded: np.ndarray
    labels: np.ndarray
    #: The run's seed, which chose the videos and seeds whatever projects them.
    seed: int


def before_and_after(ws: DatasetWorkspace, run: runs.RunRecord, *, max_videos: int, device: str = "auto") -> BeforeAndAfter:
    """Up to ``max_videos`` test videos of a run (a seeded random subset of more), embedded.

    The raw input is averaged over its entries and every axis but the channels, so grids
    and stage maps come out as one vector per video, comparable across heads.
    """
    loaded = load(ws, run, device=device)
    try:
        videos = loaded.run.config.test_videos
        if len(videos) > max_videos:
            rng = np.random.default_rng(loaded.config.seed)
            videos = [videos[i] for i in sorted(rng.choice(len(videos), max_videos, replace=False))]
        scores = predict(loaded.model, loaded.loader(videos, loaded.labels), loaded.device, loaded.dtype, embeddings=True)
        role = loaded.reader.inputs[0].role
        raw = []
        for video in videos:
            entries = loaded.reader.read(video, 0)[role].astype(np.float32)
            raw.append(entries.reshape(len(entries), entries.shape[1] if entries.ndim > 1 else 1, -1).mean(axis=(0, 2)))
    finally:
        loaded.close()
    return BeforeAndAfter(np.stack(raw), scores.embeddings, scores.labels, loaded.config.seed)


def embed_clip_arrays(
    ws: DatasetWorkspace, run_id: str, arrays: dict[str, dict[str, np.ndarray]], *, device: str = "auto"
) -> np.ndarray:
    """The embedding ``(num_features,)`` of one video given as cached arrays.

    ``arrays`` maps feature-set name -> layer -> ``(clips, *row_shape)``, what
    :meth:`FeatureSet.clips` returns for view 0; this is how a video outside the dataset
    is embedded after extracting it with the run's feature configuration.
    """
    loaded = load(ws, runs.load_run(ws, run_id), device=device)
    try:
        assembled = {}
        for spec in loaded.reader.inputs:
            missing = [name for name in spec.features if spec.layer not in arrays.get(name, {})]
            if missing:
                raise StageError(f"run {run_id!r} needs layer {spec.layer!r} of {', '.join(missing)} for this video")
            assembled[spec.role] = assemble(spec, [arrays[name][spec.layer] for name in spec.features])
        scores = predict(loaded.model, batches_of(assembled), loaded.device, loaded.dtype, embeddings=True)
    finally:
        loaded.close()
    return scores.embeddings[0].astype(np.float32)
