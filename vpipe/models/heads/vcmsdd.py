"""VCM-SDD: spatio-temporal detail attention (STC) and rgb↔flow cross-attention (MFF).

vcm-sdd-detail-attention-fusion.md §3: a video is cut into ``n`` TSN segments of ``k``
frames (the ``tsn`` sampler, 8 or 16 × 6 in §4.1); every frame of both streams is a
ResNet last-conv grid (2048 × 7 × 7 at 224², the ``grid`` layer of
:mod:`vpipe.models.backbones.resnet2d`). Per segment, as in TSN where every segment
goes through the same network:

1. **STC** (eq. 4–10) — each grid cell is a node; cells within 2 frames, 2 columns and
   2 rows of each other are joined. The edge weight comes from geometry alone,
   ``sim(i, j) = ReLU(geom_all(i, j) · W_p) · W_q`` (``W_p`` 3 × 32, ``W_q`` 32 × 1),
   is softmax-normalised over each node's neighbours and mixes their features:
   ``F_fusion(i) = Σ_j s_ij V_j``. rgb and flow share nothing but the formula.
2. **MFF** (eq. 11–12) — multi-head cross-attention, rgb cells querying flow cells and
   flow cells querying rgb cells.
3. **Fusion** (eq. 13–14) — the frames' and cells' features are averaged per segment
   (``avg_F``), the two directions classified and the scores averaged over segments.

Cost. ``sim`` depends on the offset between two cells only, and the graph stays inside
a segment, so every segment of a video has the same edge weights: STC is one
``(k·h·w) × (k·h·w)`` matrix — the softmax of ``sim`` over each node's neighbours,
zero outside the neighbourhood, so a border node normalises over the neighbours it
has — applied to every segment's ``(k·h·w) × C`` features. The matrix is blocked by
segment and shared: 294² floats (346 KB) at 6 × 7 × 7, whatever the number of segments;
nothing of size (n·k·h·w)² is formed. It costs (k·h·w)² · C multiply-adds per segment
and stream (0.18 G at 6 × 7 × 7 × 2048) where a depthwise 5 × 5 × 5 correlation costs
125 · k·h·w · C (0.08 G), but runs as one matrix product: on the 2-core CPU it trained
2.6× faster than ``conv3d(groups=C)`` at 6 × 7 × 7 and 5× at 4 × 4 × 4, with the same
result. MFF attends inside a segment: per direction an attention map of
``heads × (k·h·w)²`` (8 × 294² floats, 2.8 MB at 6 × 7 × 7) per segment. Both grow
linearly with the number of segments, i.e. with frames (measured in BENCHMARKS.md).

Cache. A float16 grid is 2048 · 7 · 7 · 2 B = 200,704 B per frame and stream, so a
video is 2 · n·6 · 200,704 B: 19.3 MB at n = 8 and 38.5 MB at n = 16; UCF101's 13,320
videos take 257 GB and 514 GB (one view; each extra training view adds as much).

Choices where the paper is silent or ambiguous:

* ``log(·)^{-1}`` in eq. 6 is read as ``1 / ln(d + e)`` with ``e`` Euler's number: the
  only reading that is finite at ``d = 0`` (the paper's stated reason for ``e``),
  positive, and decreasing with distance as the text says (1 at ``d = 0``, 0.76 at one
  cell, 0.65 at two). ``d`` is ``|Δx| / w`` (cell centres are whole cells apart),
  ``|Δy| / h`` and ``|Δt| / T`` with ``T = k``, the frames of the segment. With the
  ``tsn`` plan's default ``spacing="even"`` (§4.1: frames "evenly extracted" over each
  segment) one step of Δt is ``len/k`` video frames and Δt/T the fraction of the
  segment between two frames; ``spacing="consecutive"`` makes Δt one video frame.
* "distance ≤ 2" is per axis (``|Δt|, |Δx|, |Δy| ≤ 2``), and a node is its own
  neighbour (zero distance is ≤ 2, and eq. 6's offset exists for that case).
* ``W_p`` and ``W_q`` are matrices without bias, as written. The graph stays inside a
  segment: TSN segments are apart in time and eq. 5 measures time in the segment's ``T``.
* STC replaces the features (eq. 9–10) and MFF's output replaces the query stream's
  (eq. 11–12); neither adds a residual, as written.
* MFF "as in the transformer [46]": learned query, key, value and output projections to
  ``dim`` = 512 in ``heads`` = 8 heads (the transformer's base sizes; eq. 11's norm
  under the root is read as the head width). Without projections the block would have
  no parameters and no way to learn what to match.
* ``avg_F`` averages the segment's frames and grid cells. Eq. 14's two ``M`` terms
  averaged over segments equal one linear classifier on the concatenation of the two
  segment-averaged directions (classifier and averages are linear), which is what is
  built, so the video embedding exists for t-SNE and retrieval. With MFF off the two
  directions are the two streams' (STC or raw) features, TSN's two-stream average.
* The cached features are standardised per channel with train statistics
  (:meth:`VCMSDD.prepare`): the attention's softmax is scale-sensitive and randomly
  initialised backbones give features of arbitrary scale. Dropout (0.5) sits before
  the classifier, as in TSN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpipe.errors import ConfigError
from vpipe.head_specs import VCMSDDSpec
from vpipe.models.heads.registry import (
    Head,
    HeadBatch,
    PrepareData,
    register_head,
)

__all__ = ["RADIUS", "VCMSDD", "CrossAttention", "SpatioTemporalConsistency", "geometry"]

#: Neighbourhood half-width on each axis (the paper's "less than or equal to 2").
RADIUS = 2

#: Train frames per stream the standardisation statistics come from (they settle long before).
SAMPLE_FRAMES = 64


def geometry(offsets: Tensor, frames: int) -> Tensor:
    """``geom_all`` of eq. 6 for integer offsets ``(..., 3)`` ordered (Δt, Δx, Δy).

    Returns ``(..., 3)`` ordered (x, y, t) as in eq. 6: ``1 / ln(|Δx| + e)``,
    ``1 / ln(|Δy| + e)``, ``1 / ln(|Δt| / frames + e)``, each in (0, 1].

    Computed in float64 and rounded once to float32: ``e`` rounded to float32 lies
    below ``e``, so a float32 ``1 / ln(0 + e)`` is 1.0000001 with some CPUs' vectorised
    ``log`` and 1.0 with others. In float64 the error is far below float32's spacing,
    so every machine gets the same float32 values, and the zero offset exactly 1.
    """
    dt, dx, dy = offsets.abs().to(torch.float64).unbind(-1)
    scaled = torch.stack([dx, dy, dt / frames], dim=-1)
    return (1.0 / torch.log(scaled + math.e)).to(torch.float32)


class SpatioTemporalConsistency(nn.Module):
    """STC (eq. 6–10) over segments ``(N, k, h, w, C)``, as one neighbourhood matrix.

    See the module docstring for why every segment shares one ``(k·h·w)²`` matrix of
    edge weights and what it costs.
    """

    def __init__(self, relation_dim: int = 32) -> None:
        super().__init__()
        self.w_p = nn.Parameter(torch.empty(3, relation_dim))
        self.w_q = nn.Parameter(torch.empty(relation_dim, 1))
        nn.init.xavier_uniform_(self.w_p)
        nn.init.xavier_uniform_(self.w_q)
        span = torch.arange(-RADIUS, RADIUS + 1)
        grid = torch.stack(torch.meshgrid(span, span, span, indexing="ij"), dim=-1)
        self.register_buffer("offsets", grid, persistent=False)

    def similarity(self, frames: int) -> Tensor:
        """``sim`` of eq. 7 for every offset: ``(5, 5, 5)`` indexed [Δt, Δy, Δx] + 2."""
        sim = F.relu(geometry(self.offsets, frames) @ self.w_p) @ self.w_q
        return sim.squeeze(-1).permute(0, 2, 1)

    def edge_weights(self, k: int, h: int, w: int) -> Tensor:
        """``s_ij`` of eq. 8: row i is node i's softmax over its neighbours j, zero elsewhere."""
        axes = [torch.arange(size, device=self.offsets.device) for size in (k, h, w)]
        cells = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
        offset = cells[None, :, :] - cells[:, None, :]  # [i, j] = cell j - cell i, as (Δt, Δy, Δx)
        inside = (offset.abs() <= RADIUS).all(dim=-1)
        index = (offset.clamp(-RADIUS, RADIUS) + RADIUS).unbind(-1)
        logits = self.similarity(k)[index].masked_fill(~inside, float("-inf"))
        return torch.softmax(logits, dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """Segments ``(N, k, h, w, C)`` (channels last, the token order) to the same shape."""
        n, k, h, w, c = x.shape
        weights = self.edge_weights(k, h, w).to(x.dtype)
        return torch.matmul(weights, x.reshape(n, k * h * w, c)).reshape(n, k, h, w, c)


class CrossAttention(nn.Module):
    """Multi-head attention of ``query`` tokens over ``context`` tokens (eq. 11 / 12).

    ``softmax(Q Kᵀ / √d) V`` per head with ``Q = query·W_Q``, ``K = context·W_K``,
    ``V = context·W_V`` and ``d = dim / heads``; heads are concatenated and projected by
    ``W_O``. Shapes: ``(N, Lq, C)`` and ``(N, Lk, C)`` give ``(N, Lq, dim)``.
    """

    def __init__(self, channels: int, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(channels, dim)
        self.k = nn.Linear(channels, dim)
        self.v = nn.Linear(channels, dim)
        self.out = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        n, length, dim = x.shape
        return x.reshape(n, length, self.heads, dim // self.heads).transpose(1, 2)

    def forward(self, query: Tensor, context: Tensor) -> Tensor:
        q, k, v = self._split(self.q(query)), self._split(self.k(context)), self._split(self.v(context))
        mixed = F.scaled_dot_product_attention(q, k, v)
        return self.out(mixed.transpose(1, 2).flatten(2))


@register_head
class VCMSDD(VCMSDDSpec, Head):
    """``vcm-sdd``: STC per stream, MFF between streams, segment averaging, classifier.

    Reads the ``grid`` layer of an rgb and a flow feature set (in that order) as per-frame
    steps ``(C, h, w)``; a video's frames are cut into segments of ``frames`` (the plan's
    ``frames_per_segment``) and padded segments are left out of every average. ``stc``
    and ``mff`` switch the blocks off for the ablation of the paper's Table 2. The
    choices the paper leaves open are listed in the module docstring.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], num_classes: int, **options: Any) -> None:
        super().__init__()
        channels = self.two_stream_grid(shapes, "extract both streams with the same backbone and pass -O layer=grid")[0]
        self.frames = options["frames"]
        self.register_buffer("mean", torch.zeros(2, channels))
        self.register_buffer("std", torch.ones(2, channels))
        self.stc_rgb = SpatioTemporalConsistency(options["relation_dim"]) if options["stc"] else None
        self.stc_flow = SpatioTemporalConsistency(options["relation_dim"]) if options["stc"] else None
        self.rgb_to_flow = CrossAttention(channels, options["dim"], options["heads"]) if options["mff"] else None
        self.flow_to_rgb = CrossAttention(channels, options["dim"], options["heads"]) if options["mff"] else None
        width = options["dim"] if options["mff"] else channels
        self.num_features = 2 * width
        self.dropout = nn.Dropout(options["dropout"])
        self.classifier = nn.Linear(self.num_features, num_classes)

    def prepare(self, data: PrepareData) -> dict[str, Any]:
        """Per-channel mean and std of each stream's train frames (see the module docstring)."""
        for index, role in enumerate(("rgb", "flow")):
            sample = data.sample(role, SAMPLE_FRAMES).astype(np.float64)
            mean, std = sample.mean(axis=(0, 2, 3)), sample.std(axis=(0, 2, 3))
            floor = max(float(np.median(std)) * 1e-3, 1e-6)
            self.mean[index] = torch.from_numpy(mean)
            self.std[index] = torch.from_numpy(np.maximum(std, floor))
        return {"standardised": f"per channel, from {SAMPLE_FRAMES} train frames per stream at most"}

    def segments(self, batch: HeadBatch, role: str) -> tuple[Tensor, Tensor]:
        """The valid segments of ``role``, ``(N, k, C, h, w)``, and the video each belongs to."""
        x, lengths = batch.inputs[role], batch.lengths[role].to(torch.int64)
        k = self.frames
        if bool((lengths % k).any()) or x.shape[1] % k:
            bad = sorted({int(n) for n in lengths.tolist() if n % k}) or [x.shape[1]]
            raise ConfigError(
                f"head {self.name!r}: {role} videos have {bad[0]} frames, not whole segments of frames={k}: "
                "pass -O frames=<the tsn plan's frames_per_segment>"
            )
        b, length = x.shape[:2]
        per_video = (lengths // k).to(x.device)
        valid = torch.arange(length // k, device=x.device) < per_video[:, None]
        video = torch.arange(b, device=x.device)[:, None].expand_as(valid)
        return x.reshape(b, length // k, k, *x.shape[2:])[valid], video[valid]

    def forward_features(self, batch: HeadBatch) -> Tensor:
        """Mean over each video's valid segments of ``[avg_F(rgb side), avg_F(flow side)]``."""
        rgb, video = self.segments(batch, "rgb")
        flow, flow_video = self.segments(batch, "flow")
        if not torch.equal(video, flow_video):
            raise ConfigError(
                f"head {self.name!r}: rgb and flow have different frame counts per video; "
                "extract both streams from the same tsn plan"
            )
        rgb = (rgb.permute(0, 1, 3, 4, 2).contiguous() - self.mean[0]) / self.std[0]
        flow = (flow.permute(0, 1, 3, 4, 2).contiguous() - self.mean[1]) / self.std[1]
        if self.stc_rgb is not None and self.stc_flow is not None:
            rgb, flow = self.stc_rgb(rgb), self.stc_flow(flow)
        rgb_tokens, flow_tokens = rgb.flatten(1, 3), flow.flatten(1, 3)
        if self.rgb_to_flow is not None and self.flow_to_rgb is not None:
            rgb_tokens, flow_tokens = (
                self.rgb_to_flow(rgb_tokens, flow_tokens),
                self.flow_to_rgb(flow_tokens, rgb_tokens),
            )
        per_segment = torch.cat([rgb_tokens.mean(dim=1), flow_tokens.mean(dim=1)], dim=1)
        b = len(batch)
        total = per_segment.new_zeros(b, per_segment.shape[1]).index_add_(0, video, per_segment)
        count = torch.bincount(video, minlength=b).clamp_min(1).to(per_segment.dtype)
        return total / count[:, None]

    def forward_head(self, embedding: Tensor) -> Tensor:
        return self.classifier(self.dropout(embedding))
