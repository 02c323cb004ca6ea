"""Computing the optical flow of planned clips, batched across clips and videos.

Flow is computed on exactly the pixels the backbone will see: each frame pair is
resized, cropped and flipped like its clip, so the flow stream needs no geometry
of its own. Identical pairs (looped short videos, overlapping clips) are computed
once per task.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vpipe.artifacts.provenance import FlowProvenance
from vpipe.device import resolve_device
from vpipe.video.prefetch import default_loader_workers, prefetched
from vpipe.video.jobs import ClipSpec, VideoJob, flow_pair
from vpipe.flow.quantize import encode_flow
from vpipe.flow.tvl1 import tvl1
from vpipe.store.shards import ShardWriter, rows_per_job, shard_name
from vpipe.video.decode import read_frames
from vpipe.video.sampling import flow_stack_indices
from vpipe.video.views import apply_crop

PairKey = tuple[str, int, int, tuple]
#: Pixels per TV-L1 batch on CPU: about what stays in cache across the solver's passes.
CPU_BATCH_PIXELS = 100_000


@dataclass(frozen=True)
class FlowConfig:
    out_dir: str
    #: 0: one field per clip frame (3D nets); L > 0: a stack of L fields around each frame (2D nets).
    stack: int = 0
    encoding: str = "uint8"
    bound: float = 20.0
    device: str = "auto"
    #: None: as many pairs as fill ~100k pixels on CPU (measured: 8 at 112 px, 1-2 at
    #: 224 px; larger batches fall out of cache and get slower per pair), 256 on CUDA.
    pairs_per_batch: int | None = None
    decoder: str = "auto"
    tvl1_params: tuple[tuple[str, Any], ...] = ()
    #: Loader processes reading and cropping frames ahead of TV-L1; None: the device's default.
    loader_workers: int | None = None
    provenance: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @classmethod
    def from_provenance(cls, provenance: FlowProvenance, out_dir: str, device: str = "auto") -> FlowConfig:
        """The configuration a flow cache was computed with, from its recorded provenance.

        The TV-L1 options are the ones given, not the resolved set: the solver resolves
        them again, exactly as the flow stage did (its defaults are frozen in the flow
        fingerprint, so a cache made under other defaults is stale, not reproduced).
        """
        return cls(
            out_dir=str(out_dir),
            stack=provenance.stack,
            encoding=provenance.encoding,
            bound=provenance.bound,
            device=device,
            decoder=provenance.decoder,
            tvl1_params=tuple(sorted(provenance.tvl1_params.items())),
        )


def clip_pairs(spec: ClipSpec, num_frames: int, stack: int) -> np.ndarray:
    """(T, 2) or (T, L, 2) frame pairs whose flows make the clip's flow row."""
    if stack == 0:
        return np.array([flow_pair(f, num_frames) for f in spec.frames], dtype=np.int64)
    rows = flow_stack_indices(np.asarray(spec.frames), num_frames, stack)
    return np.stack([rows[:, :-1], rows[:, 1:]], axis=-1)


@dataclass(frozen=True)
class VideoPairs:
    """A video's clip layouts and its distinct cropped frame pairs, ready for TV-L1."""

    layouts: list[tuple[ClipSpec, np.ndarray]]
    #: ((a, b, crop fields), first cropped frame, second cropped frame) per distinct pair.
    pairs: list[tuple[tuple[int, int, tuple], np.ndarray, np.ndarray]]


def read_video_pairs(job: VideoJob, stack: int, decoder: str) -> VideoPairs:
    """Decode the frames a video's clips need once, and crop every distinct pair like its clip.

    Module-level and free of torch, so loader processes can run it ahead of TV-L1.
    """
    layouts = [(spec, clip_pairs(spec, job.num_frames, stack)) for spec in job.clips]
    needed = np.unique(np.concatenate([pairs.ravel() for _, pairs in layouts]))
    frames = read_frames(job.path, needed, decoder=decoder)
    position = {int(f): i for i, f in enumerate(needed)}
    out, seen = [], set()
    for spec, pairs in layouts:
        crop = tuple(asdict(spec.crop).values())
        todo = sorted(p for p in {(int(a), int(b)) for a, b in pairs.reshape(-1, 2)} if (*p, crop) not in seen)
        if not todo:
            continue
        firsts = apply_crop(frames[[position[a] for a, _ in todo]], spec.crop)
        seconds = apply_crop(frames[[position[b] for _, b in todo]], spec.crop)
        for (a, b), first, second in zip(todo, firsts, seconds):
            seen.add((a, b, crop))
            out.append(((a, b, crop), first, second))
    return VideoPairs(layouts, out)


def flow_videos(config: FlowConfig, jobs: list[VideoJob]) -> list[list[dict] | Exception]:
    """The flow stage's batched item function: index rows per video, or its error.

    Videos are read and cropped in loader processes ahead of TV-L1
    (:mod:`vpipe.video.prefetch`; by default on CUDA only), in order, so the batches
    and the stored flow are the same with and without them.
    """
    device = resolve_device(config.device)
    params = dict(config.tvl1_params)
    outcome: dict[int, list[dict] | Exception] = {}
    flows: dict[PairKey, np.ndarray] = {}
    queue: list[tuple[PairKey, np.ndarray, np.ndarray]] = []
    layouts: dict[int, list[tuple[ClipSpec, np.ndarray]]] = {}

    def compute(count: int) -> None:
        batch, queue[:] = queue[:count], queue[count:]
        prev = torch.from_numpy(np.stack([b[1] for b in batch]))
        nxt = torch.from_numpy(np.stack([b[2] for b in batch]))
        if device.type == "cuda":
            prev, nxt = prev.pin_memory(), nxt.pin_memory()
        fields = tvl1(prev.to(device, non_blocking=True), nxt.to(device, non_blocking=True), **params)
        codes = encode_flow(fields, config.encoding, config.bound).cpu().numpy()
        for (key, _, _), code in zip(batch, codes):
            flows[key] = code

    def batch_size(pixels: int) -> int:
        if config.pairs_per_batch:
            return config.pairs_per_batch
        return 256 if device.type == "cuda" else max(1, CPU_BATCH_PIXELS // pixels)

    workers = default_loader_workers(device) if config.loader_workers is None else config.loader_workers
    load = partial(read_video_pairs, stack=config.stack, decoder=config.decoder)
    for index, loaded in prefetched(load, jobs, workers):
        if isinstance(loaded, Exception):
            outcome[index] = loaded
            continue
        layouts[index] = loaded.layouts
        for (a, b, crop), first, second in loaded.pairs:
            key = (jobs[index].video_id, a, b, crop)
            flows[key] = None
            queue.append((key, first, second))
        while queue and len(queue) >= batch_size(queue[0][1].shape[0] * queue[0][1].shape[1]):
            compute(batch_size(queue[0][1].shape[0] * queue[0][1].shape[1]))
        outcome[index] = []
    while queue:
        compute(batch_size(queue[0][1].shape[0] * queue[0][1].shape[1]))

    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / shard_name("flow", "\n".join(job.video_id for job in jobs))
    with ShardWriter(path, attrs=config.provenance, dtypes={"flow": np.dtype(config.encoding)}) as writer:
        for index, job in enumerate(jobs):
            if isinstance(outcome[index], Exception):
                continue
            for spec, pairs in layouts[index]:
                crop = tuple(asdict(spec.crop).values())
                grid = pairs.reshape(-1, 2)
                row = np.stack([flows[(job.video_id, int(a), int(b), crop)] for a, b in grid])
                writer.add(job.video_id, spec.clip, spec.view, {"flow": row.reshape(*pairs.shape[:-1], *row.shape[1:])})
    errors = {i: error for i, error in outcome.items() if isinstance(error, Exception)}
    return rows_per_job([job.video_id for job in jobs], writer.rows, errors)
