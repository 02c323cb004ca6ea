"""Late fusion: one head per stream, class probabilities averaged (the two-stream protocol).

Two-stream networks train the rgb and the flow network each to classify on its own and
average their softmax scores at test time. Here both heads train in one run on the sum
of their own losses: their parameters are disjoint, so each receives exactly the
gradients it would get alone, while the run shares one split, schedule and early
stopping (on the fused validation accuracy). The fused "logits" are the logarithm of the
averaged probabilities, so argmax, cross-entropy and top-k read them as usual.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from vpipe.head_specs import prefixed_files, stream_prefix  # noqa: F401 (re-exported)
from vpipe.models.heads.registry import Head, HeadBatch, PrepareData


class LateFusion(Head):
    """Heads ``heads[i]`` each read the roles prefixed :func:`stream_prefix` (i)."""

    name = "late-fusion"

    def __init__(self, heads: list[Head]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.num_features = sum(h.num_features for h in heads)

    def _parts(self, batch: HeadBatch) -> list[HeadBatch]:
        return [batch.select(stream_prefix(i)) for i in range(len(self.heads))]

    def forward_features(self, batch: HeadBatch) -> Tensor:
        return torch.cat([h.forward_features(b) for h, b in zip(self.heads, self._parts(batch))], dim=1)

    def _fuse(self, logits: list[Tensor]) -> Tensor:
        log_probs = torch.stack([torch.log_softmax(x.float(), dim=1) for x in logits])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(logits))

    def forward(self, batch: HeadBatch, return_embedding: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        outputs = [h(b, return_embedding=True) for h, b in zip(self.heads, self._parts(batch))]
        fused = self._fuse([logits for logits, _ in outputs])
        if return_embedding:
            return fused, torch.cat([embedding for _, embedding in outputs], dim=1)
        return fused

    def training_loss(self, batch: HeadBatch) -> tuple[Tensor, Tensor]:
        results = [h.training_loss(b) for h, b in zip(self.heads, self._parts(batch))]
        return sum(loss for loss, _ in results), self._fuse([logits for _, logits in results])

    def prepare(self, data: PrepareData) -> dict[str, Any] | None:
        records = {}
        for i, head in enumerate(self.heads):
            prefix = stream_prefix(i)
            part = PrepareData(
                sample=_prefixed_sample(data.sample, prefix),
                batches=_prefixed_batches(data.batches, prefix),
                files={k[len(prefix) :]: v for k, v in data.files.items() if k.startswith(prefix)},
                fit_videos=data.fit_videos,
                seed=data.seed,
                histogram_columns=_prefixed_columns(data.histogram_columns, prefix),
            )
            records[str(i)] = head.prepare(part)
        return records


def _prefixed_sample(sample: Callable[[str, int], Any], prefix: str) -> Callable[[str, int], Any]:
    return lambda role, limit: sample(prefix + role, limit)


def _prefixed_columns(columns: Callable[[str], Any], prefix: str) -> Callable[[str], Any]:
    return lambda role: columns(prefix + role)


def _prefixed_batches(batches: Callable[[], Any], prefix: str) -> Callable[[], Any]:
    return lambda: (b.select(prefix) for b in batches())
