"""What training, evaluation and reports share: the model, the device, and scoring a split.

Training and ``vpipe evaluate`` score the test split through :func:`test_metrics` with the
same batch size and order, so a reloaded checkpoint reproduces the stored metrics exactly
(only the measured time differs).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vpipe.device import autocast
from vpipe.models.heads.registry import Head, HeadBatch
from vpipe.train.metrics import classification_metrics


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch; on CPU this makes a run repeat bit for bit."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run the block on ``count`` torch CPU threads (None: as they are), then restore them.

    Scoped rather than global, because the number of threads is process state that the
    caller may rely on, while the right number depends on the job: small recurrent heads
    gain little from a second thread and, on busy cores, lose badly to its busy-waiting.
    """
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype: bf16 where the GPU has it, else fp16; None on CPU or when off."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def parameter_count(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


@dataclass
class Scores:
    """Per-video outputs of one pass over a split, in loader order."""

    logits: np.ndarray
    labels: np.ndarray
    embeddings: np.ndarray | None
    forward_seconds: float


@torch.no_grad()
def predict(
    model: Head,
    loader: Iterable[HeadBatch],
    device: torch.device,
    dtype: torch.dtype | None,
    *,
    embeddings: bool = False,
) -> Scores:
    """Logits (and embeddings) of every item; ``forward_seconds`` times the model only."""
    model.eval()
    logits, labels, embedded, seconds = [], [], [], 0.0
    for batch in loader:
        y = batch.labels
        batch = batch.to(device)
        start = time.perf_counter()
        with autocast(device, dtype):
            out, embedding = model(batch, return_embedding=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds += time.perf_counter() - start
        logits.append(out.float().cpu().numpy())
        labels.append(y.numpy())
        if embeddings:
            embedded.append(embedding.float().cpu().numpy())
    return Scores(
        logits=np.concatenate(logits),
        labels=np.concatenate(labels),
        embeddings=np.concatenate(embedded) if embeddings else None,
        forward_seconds=seconds,
    )


def test_metrics(
    model: Head,
    loader: Iterable[HeadBatch],
    device: torch.device,
    dtype: torch.dtype | None,
    class_names: list[str],
) -> dict[str, Any]:
    """``metrics.json``: the test metrics, the model's size and its time per test video.

    The time is the model's forward pass only (reading cached features is excluded), in
    milliseconds, comparable to the papers' "testing duration" per video.
    """
    scores = predict(model, loader, device, dtype)
    metrics = classification_metrics(scores.labels, scores.logits, class_names)
    metrics["parameters"] = parameter_count(model)
    metrics["test_ms_per_video"] = 1000.0 * scores.forward_seconds / len(scores.labels)
    return metrics
