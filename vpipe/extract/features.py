"""Running a backbone over the clips of many videos and writing one shard per task.

Clips of several videos share each forward pass, so small videos still make full
batches; decoding runs in DataLoader worker processes while the model computes.
Everything a worker needs arrives in one picklable :class:`ExtractConfig`, and the
model is built once per process and reused by every task that process runs.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vpipe.artifacts.provenance import FeatureProvenance
from vpipe.device import precision_autocast, resolve_device
from vpipe.errors import ConfigError, NonFiniteError
from vpipe.extract.inputs import LoadedClip, crop_rgb_clips, stack_rgb_and_flow
from vpipe.video.prefetch import default_loader_workers, prefetched
from vpipe.video.jobs import VideoJob
from vpipe.flow.quantize import quantize_flow
from vpipe.models import backbone
from vpipe.models.backbones.registry import inference_model
from vpipe.store.reader import FeatureSet
from vpipe.store.shards import ShardWriter, rows_per_job, shard_name

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExtractConfig:
    backbone: str
    stream: str
    out_dir: str
    weights: str | None = None
    options: tuple[tuple[str, Any], ...] = ()
    device: str = "auto"
    batch_size: int = 8
    #: Loader processes decoding ahead of the model (:mod:`vpipe.video.prefetch`);
    #: None: the device's default (some on CUDA, none on CPU).
    decode_workers: int | None = None
    decoder: str = "auto"
    flow_dir: str | None = None
    #: What each clip is built from: ("rgb",), ("flow",), or ("rgb", "flow") stacked as channels.
    inputs: tuple[str, ...] = ("rgb",)
    #: Keys the per-process model cache: new weights written over the same path must
    #: not be served by the model loaded from the old file.
    weights_sha256: str | None = None
    #: "fp32" or "bf16" autocast (:class:`vpipe.device.ComputeSettings`), as fingerprinted.
    precision: str = "fp32"
    provenance: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def from_provenance(
        cls,
        provenance: FeatureProvenance,
        out_dir: str,
        *,
        weights: str | None,
        inputs: tuple[str, ...],
        device: str = "auto",
        flow_dir: str | None = None,
    ) -> ExtractConfig:
        """The configuration a feature set was extracted with, from its recorded provenance.

        The backbone gets its *resolved* options (the defaults at extraction time merged
        with the user's), so a later change of a default does not change the model;
        provenance from before resolved options were recorded falls back to the typed ones.
        ``weights`` and ``inputs`` are passed in because resolving them checks files and
        the registry, which the caller does with its own messages. The recorded precision
        is kept (bf16 autocast runs on CPU too), so a query video is computed like the cache.
        """
        precision = {} if provenance.precision is None else {"precision": provenance.precision}
        return cls(
            backbone=provenance.backbone,
            stream=provenance.stream,
            out_dir=str(out_dir),
            weights=weights,
            options=tuple(sorted(provenance.backbone_options.items())),
            device=device,
            decoder=provenance.decoder,
            flow_dir=flow_dir,
            inputs=inputs,
            weights_sha256=provenance.weights_sha256,
            **precision,
        )


@functools.lru_cache(maxsize=2)
def load_model(
    name: str, stream: str, weights: str | None, options: tuple, device: str, weights_sha256: str | None = None
) -> nn.Module:
    """One model per process and configuration: building I3D costs more than a batch.

    The model is the backbone's inference form (:func:`inference_model`): every
    feature, cached or a query's, comes from the same computation.

    ``weights_sha256`` is part of the cache key only, so that a checkpoint replaced
    under the same path is loaded again instead of reusing the stale model.
    """
    model = inference_model(backbone(name, stream=stream, weights=weights, **dict(options)))
    target = resolve_device(device)
    model = model.to(target)
    if target.type == "cuda":
        fmt = torch.channels_last_3d if model.spec.input_kind == "clip" else torch.channels_last
        model = model.to(memory_format=fmt)
    return model


def flow_clips(job: VideoJob, flow_dir: str) -> list[LoadedClip]:
    """A video's cached flow rows (the flow stage's output), keyed by (clip, view)."""
    features = _open_flow(flow_dir)
    clips = []
    for view in sorted({c.view for c in job.clips}):
        stacked = features.clips(job.video_id, view=view, layer="flow")
        if stacked.dtype != np.uint8:
            stacked = quantize_flow(torch.from_numpy(stacked.astype(np.float32))).numpy()
        wanted = sorted(c.clip for c in job.clips if c.view == view)
        clips.extend(LoadedClip(clip, view, stacked[i]) for i, clip in enumerate(wanted))
    return clips


def rgb_and_flow(job: VideoJob, flow_dir: str, decoder: str) -> list[LoadedClip]:
    """A video's decoded clips with their cached flow stacked on as two more channels."""
    return stack_rgb_and_flow(crop_rgb_clips(job, decoder), flow_clips(job, flow_dir))


def clip_loader(config: ExtractConfig) -> Callable[[VideoJob], list[LoadedClip]]:
    """The per-video loader for the inputs the backbone is built from; picklable, so
    that loader processes can run it."""
    if config.inputs == ("rgb",):
        return functools.partial(crop_rgb_clips, decoder=config.decoder)
    if config.inputs == ("flow",):
        return functools.partial(flow_clips, flow_dir=config.flow_dir)
    if set(config.inputs) == {"rgb", "flow"}:
        return functools.partial(rgb_and_flow, flow_dir=config.flow_dir, decoder=config.decoder)
    raise ConfigError(f"backbone {config.backbone} reads {config.inputs}: only rgb, flow or both can be loaded")


@functools.lru_cache(maxsize=4)
def _open_flow(flow_dir: str) -> FeatureSet:
    return FeatureSet.open(Path(flow_dir))


def to_model_input(batch: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """uint8 clips -> normalised float input in the layout the backbone expects.

    rgb (B, T, h, w, 3), or (B, T, h, w, 5) with the flow codes stacked on (rgb-stream
    backbones built from both); flow pairs (B, T, 2, h, w); flow stacks (B, T, L, 2, h, w).
    Clip backbones take (B, C, T, h, w); frame backbones take every frame (or every
    L-field stack, channels interleaved x1, y1, x2, y2, ...) as one image.
    """
    spec = model.spec
    if spec.stream == "rgb":
        x = batch.permute(0, 1, 4, 2, 3)
    elif batch.dim() == 6:
        b, t, stack, two, h, w = batch.shape
        x = batch.reshape(b, t, stack * two, h, w)
    else:
        x = batch
    x = x.float().div_(255.0)
    mean = torch.tensor(spec.mean, device=x.device).view(1, 1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device).view(1, 1, -1, 1, 1)
    x = (x - mean) / std
    if spec.input_kind == "clip":
        return x.permute(0, 2, 1, 3, 4).contiguous()
    return x.flatten(0, 1)


@torch.inference_mode()
def run_model(
    model: nn.Module, clips: list[LoadedClip], device: torch.device, precision: str = "fp32"
) -> list[dict[str, np.ndarray]]:
    """Forward a batch of same-shape clips; per clip, every cached layer as float32 numpy."""
    batch = torch.from_numpy(np.stack([c.data for c in clips]))
    if device.type == "cuda":
        batch = batch.pin_memory().to(device, non_blocking=True)
    x = to_model_input(batch, model)
    if device.type == "cuda":
        fmt = torch.channels_last_3d if x.dim() == 5 else torch.channels_last
        x = x.contiguous(memory_format=fmt)
    with precision_autocast(device, precision):
        layers = model.forward_features(x)
    per_clip: list[dict[str, np.ndarray]] = [{} for _ in clips]
    for name, value in layers.items():
        value = value.float()
        if model.spec.input_kind == "frames":
            value = value.reshape(len(clips), -1, *value.shape[1:])
        array = value.cpu().numpy()
        for i in range(len(clips)):
            per_clip[i][name] = array[i]
    return per_clip


def non_finite_layers(arrays: dict[str, np.ndarray]) -> list[str]:
    return sorted(name for name, array in arrays.items() if not np.isfinite(array).all())


def finite_features(
    model: nn.Module, clips: list[LoadedClip], device: torch.device, precision: str
) -> list[dict[str, np.ndarray] | list[str]]:
    """Per clip, its layers, or the names of the layers that stayed non-finite.

    A clip that overflows under bf16 autocast (one activation past bf16's range, or a
    reduction that loses its last digits) is computed again alone in fp32, the precision
    bf16 approximates; only if fp32 is non-finite too is it a failure, of its video
    alone. The retry is per clip rather than per video: a video's clips can lie in
    batches already written, and an fp32 clip beside bf16 ones is closer to the
    reference, not further. Retries are logged so a backbone that overflows often shows.
    """
    results: list[dict[str, np.ndarray] | list[str]] = []
    for clip, arrays in zip(clips, run_model(model, clips, device, precision)):
        bad = non_finite_layers(arrays)
        if bad and precision != "fp32":
            log.warning("clip %d view %d gave non-finite %s under %s autocast; computed again in fp32",
                        clip.clip, clip.view, ", ".join(bad), precision)  # fmt: skip
            arrays = run_model(model, [clip], device, "fp32")[0]
            bad = non_finite_layers(arrays)
        results.append(bad or arrays)
    return results


def extract_videos(config: ExtractConfig, jobs: list[VideoJob]) -> list[list[dict] | Exception]:
    """The extract stage's batched item function: index rows per video, or its error."""
    model = load_model(
        config.backbone, config.stream, config.weights, config.options, config.device, config.weights_sha256
    )
    device = resolve_device(config.device)
    load = clip_loader(config)
    outcome: dict[int, list[dict] | Exception] = {}
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / shard_name("extract", "\n".join(job.video_id for job in jobs))
    workers = default_loader_workers(device) if config.decode_workers is None else config.decode_workers
    pending: list[tuple[int, LoadedClip]] = []

    def flush(writer: ShardWriter, count: int) -> None:
        batch, pending[:] = pending[:count], pending[count:]
        for (index, clip), arrays in zip(batch, finite_features(model, [c for _, c in batch], device, config.precision)):
            if isinstance(outcome[index], Exception):
                continue
            if isinstance(arrays, list):
                outcome[index] = NonFiniteError(
                    f"{config.backbone} gave non-finite values in {', '.join(arrays)} (fp32 too) for clip "
                    f"{clip.clip} view {clip.view} of {jobs[index].video_id}; its features are not stored"
                )
                continue
            try:
                writer.add(jobs[index].video_id, clip.clip, clip.view, arrays)
            except ValueError as error:  # beyond float16 storage: this video fails, not the task
                outcome[index] = error

    with ShardWriter(path, attrs=config.provenance) as writer:
        for index, loaded in prefetched(load, jobs, workers):
            if isinstance(loaded, Exception):
                outcome[index] = loaded
                continue
            pending.extend((index, clip) for clip in loaded)
            outcome[index] = []
            while len(pending) >= config.batch_size:
                flush(writer, config.batch_size)
        while pending:
            flush(writer, config.batch_size)
    errors = {i: error for i, error in outcome.items() if isinstance(error, Exception)}
    return rows_per_job([job.video_id for job in jobs], writer.rows, errors)
