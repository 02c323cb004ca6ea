"""ST-MANet head on cached 3D ResNet-50 stage maps (st-manet-multilevel-aggregation.md §3).

Per stage i = 2..5 the head reads the cached map ``Z^i`` (C, T, H, W) of one clip and
computes

* **TDA** (§3.2, eq. 1–3, Fig. 2), two branches sharing one temporal attention matrix:
  ``Z_c = [Z^i ; X^{i-1}]`` (channels), ``A_t = softmax(φ(Z_c) ω(Z_c))`` (T × T) with
  φ, ω 3×1×1 convolutions; the aggregation branch ``X^i = ε_b(A_t · τ(Z_c))`` (3×1×1
  conv to C_i channels, then pooled to the next stage's T, H, W; not pooled at stage 5)
  feeds stage i+1, and the main branch ``Z_t^i = Z^i + ε_m(A_t · σ(Z^i))``;
* **SDA** (§3.3, eq. 4–5, Fig. 3): ``A_s = softmax(α(Z^i) β(Z^i))`` over the H·W
  positions and ``Z_s^i = π(A_s · η(Z^i))``;
* **multi-level fusion** (eq. 8): ``F^i = Z^i ⊕ Z_t^i ⊕ Z_s^i``, each stage globally
  average pooled, the four vectors concatenated (256 + 512 + 1024 + 2048 = 3840 values
  for r3d50), then dropout and a linear classifier;
* **loss** (eq. 6, 7, 9): ``CE + λ1·L_s + λ2·L_t``, where ``L_s`` / ``L_t`` sum the
  cosine similarity of the (downsampled) spatial / temporal attention maps over every
  ordered pair of different stages.

The backbone is frozen and its maps come from the cache (``vpipe extract --backbone
r3d50``); in the paper the whole network is trained and the TDA/SDA outputs are fed
back into the next ResNet stage. Here the branches run beside the frozen stages, so
stage i+1 never sees stage i's attention; everything else follows the paper.

Sampling (§4.1): the cache holds the dense 64-frame windows subsampled to 32 frames
(``vpipe plan --sampler dense``). Training reads one randomly chosen window per video
per step ("randomly samples continuous video segments"); evaluation reads every
window and averages the scores over them, padded windows excluded.

Choices where the paper is ambiguous or silent:

* Eq. 2–3 write ``softmax(A ⊗ V)`` although ``A`` is already a softmax (eq. 1); a second
  softmax over the values would turn features into a distribution and erase their
  scale, so the attention is normalised once (``A · V``) and "⊗" is the matrix product
  the shapes call for.
* Attention logits are divided by √d (d the length of the dot product, up to 4.9·10⁴ at
  stage 5): unscaled, the softmax is one-hot from the first step and passes no gradient.
* Widths: φ, ω keep the 3C/2 channels of ``Z_c`` (the reshaped size the paper gives);
  ``reduction`` divides them for a lighter head. ε_b maps 3C/2 → C, so it delivers the
  C_{i+1}/2 = C_i channels the next TDA expects; ε_m maps C → C for the residual sum.
* The paper's stage-1 TDA output is not cached, so stage 2's aggregation branch starts
  from a 3×1×1 conv of ``Z^2`` to C/2 channels.
* The paper's SDA has no parameters (α, β, η are reshapes). On a frozen backbone that
  would make SDA a fixed function and ``L_s`` a constant, so α and β get 1×1×1 convs
  (C → C/reduction), as in position self-attention; η stays a reshape.
* ⊕ in eq. 8 is the element-wise sum (the terms have equal shapes); the last TDA's
  unpooled branch output ``X^5`` joins the stage-5 sum ("for subsequent feature fusion").
  Eq. 8 is kept as written although it counts ``Z^i`` twice: eq. 3's main branch is
  already the residual ``Z_t^i = Z^i + ε_m(·)``, so with TDA on
  ``F^i = 2·Z^i + ε_m(A_t · σ(Z^i)) + Z_s^i``. After global pooling the factor 2 only
  scales the backbone's share of the embedding against the attention terms, which the
  classifier can undo; dropping one ``Z^i`` would depart from the formula for no
  measured gain. With TDA off the sum is ``Z^i + Z_s^i``.
* Pooling in ε_b is average pooling. Diversity downsampling S (eq. 6) is average
  pooling of each map to the smallest stage's size; with the cached grid equal at every
  stage the spatial maps already agree. θ holds ordered pairs, so identical maps at the
  four stages give L = 12 and maps with disjoint support give 0.
* λ1 = 0.01 (L_s) and λ2 = 0.001 (L_t) as in §4.5. Dropout 0.5 before the classifier
  (the paper names none). Scores averaged over windows are the logits: with a linear
  classifier that equals classifying the mean window embedding, which is what
  :meth:`forward_features` returns.
* Inputs are standardised per channel with train statistics (:meth:`prepare`); the
  cached maps of different stages differ in scale.

Ablation switches (Table 4): ``tda``, ``sda`` and ``multilevel=false`` (stage 5 only, no
MF); ``tda=false sda=false multilevel=false lambda_s=0 lambda_t=0`` is the pooled 3D
ResNet-50 + linear baseline, and ``tda=false sda=false lambda_s=0 lambda_t=0`` its
"R50 + MF" row (the four pooled stages concatenated). The paper's rows, in its order:
R50, + TDA, + SDA, + TDA + SDA, + MF, and all of them (``bench/stmanet.py`` ROWS).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpipe.errors import ConfigError
from vpipe.head_specs import STMANET_ROLES as ROLES, STMANetSpec
from vpipe.models.heads.registry import (
    Head,
    HeadBatch,
    PrepareData,
    register_head,
)

__all__ = ["ROLES", "STMANet", "SpatialAttention", "TemporalAttention", "diversity"]

#: Train windows the per-channel input statistics are taken from.
SAMPLE_CLIPS = 256


def _steps(x: Tensor) -> Tensor:
    """(N, C, T, H, W) → (N, T, C·H·W): the paper's φ, ω, τ, σ reshapes."""
    return x.permute(0, 2, 1, 3, 4).flatten(2)


def _unsteps(x: Tensor, like: Tensor) -> Tensor:
    """Inverse of :func:`_steps` for a map shaped like ``like``."""
    n, c, t, h, w = like.shape
    return x.reshape(n, t, c, h, w).permute(0, 2, 1, 3, 4)


def _positions(x: Tensor) -> Tensor:
    """(N, C, T, H, W) → (N, H·W, C·T): the paper's α, η reshapes."""
    return x.flatten(3).flatten(1, 2).transpose(1, 2)


class TemporalAttention(nn.Module):
    """TDA of one stage (eq. 1–3): one T × T attention, an aggregation and a main branch.

    ``branch_channels`` is the width of the previous TDA's output; ``main`` builds the
    main branch ε_m (only stages whose output is fused need it); ``out_size`` is the
    (T, H, W) the aggregation branch is pooled to for the next stage, None at stage 5.
    """

    def __init__(
        self, channels: int, branch_channels: int, *, reduction: int, main: bool, out_size: tuple[int, int, int] | None
    ) -> None:
        super().__init__()
        joint = channels + branch_channels
        width = max(1, joint // reduction)
        self.query = nn.Conv3d(joint, width, (3, 1, 1), padding=(1, 0, 0))
        self.key = nn.Conv3d(joint, width, (3, 1, 1), padding=(1, 0, 0))
        self.branch_out = nn.Conv3d(joint, channels, (3, 1, 1), padding=(1, 0, 0))
        self.main_out = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)) if main else None
        self.out_size = out_size

    def attention(self, joint: Tensor) -> Tensor:
        """A_t (N, T, T), eq. 1, rows summing to 1."""
        q, k = _steps(self.query(joint)), _steps(self.key(joint))
        return torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)

    def forward(self, z: Tensor, branch: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        """(Z_t or None without a main branch, X for the next stage, A_t)."""
        joint = torch.cat([z, branch], dim=1)
        attn = self.attention(joint)
        x = self.branch_out(_unsteps(attn @ _steps(joint), joint))
        if self.out_size is not None:
            x = F.adaptive_avg_pool3d(x, self.out_size)
        z_t = None if self.main_out is None else z + self.main_out(_unsteps(attn @ _steps(z), z))
        return z_t, x, attn


class SpatialAttention(nn.Module):
    """SDA of one stage (eq. 4–5): attention between the H·W positions of the map."""

    def __init__(self, channels: int, *, reduction: int) -> None:
        super().__init__()
        width = max(1, channels // reduction)
        self.query = nn.Conv3d(channels, width, 1)
        self.key = nn.Conv3d(channels, width, 1)

    def attention(self, z: Tensor) -> Tensor:
        """A_s (N, H·W, H·W), eq. 4, rows summing to 1."""
        q, k = _positions(self.query(z)), _positions(self.key(z))
        return torch.softmax(q @ k.transpose(1, 2) / math.sqrt(q.shape[-1]), dim=-1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(Z_s, A_s); Z_s = π(A_s · η(Z)) has the shape of ``z``."""
        attn = self.attention(z)
        n, c, t, h, w = z.shape
        out = (attn @ _positions(z)).transpose(1, 2).reshape(n, c, t, h, w)
        return out, attn


def diversity(maps: list[Tensor]) -> Tensor:
    """Eq. 6–7: Σ over ordered pairs of stages of the cosine similarity of their attention
    maps, each average-pooled to the smallest map's size; mean over the batch.

    ``maps`` holds one (N, n_i, n_i) tensor per stage.
    """
    size = min(m.shape[-1] for m in maps)
    flat = [F.adaptive_avg_pool2d(m.unsqueeze(1), size).flatten(1) for m in maps]
    total = maps[0].new_zeros(maps[0].shape[0])
    for i, a in enumerate(flat):
        for j, b in enumerate(flat):
            if i != j:
                total = total + F.cosine_similarity(a, b, dim=1, eps=1e-12)
    return total.mean()


@register_head
class STMANet(STMANetSpec, Head):
    """``st-manet``: TDA + SDA per cached r3d50 stage, multi-level fusion, diversity loss.

    See the module docstring for the equations and the choices made where the paper is
    silent; the backbone is frozen and cached, unlike the paper's end-to-end training.
    """

    def __init__(self, shapes: dict[str, tuple[int, ...]], num_classes: int, **options: Any) -> None:
        super().__init__()
        for role in ROLES:
            shape = shapes.get(role)
            if shape is None or len(shape) != 4:
                raise ConfigError(
                    f"head {self.name!r} reads stage maps (C, T, H, W) as role {role!r}, got "
                    f"{'nothing' if shape is None else list(shape)}: extract a backbone with stage maps "
                    "(`vpipe extract --backbone r3d50`)"
                )
        self.config = options
        self.fused = ROLES if options["multilevel"] else ROLES[-1:]
        channels = [shapes[role][0] for role in ROLES]
        for role, c in zip(ROLES, channels):
            self.register_buffer(f"{role}_mean", torch.zeros(c))
            self.register_buffer(f"{role}_std", torch.ones(c))
        self.tda: nn.ModuleList | None = None
        if options["tda"]:
            self.stem = nn.Conv3d(channels[0], channels[0] // 2, (3, 1, 1), padding=(1, 0, 0))
            branch = [channels[0] // 2, *channels[:-1]]
            sizes = [tuple(shapes[role][1:]) for role in ROLES[1:]] + [None]
            self.tda = nn.ModuleList(
                TemporalAttention(c, b, reduction=options["reduction"], main=role in self.fused, out_size=size)
                for role, c, b, size in zip(ROLES, channels, branch, sizes)
            )
        self.sda = (
            nn.ModuleDict({role: SpatialAttention(shapes[role][0], reduction=options["reduction"]) for role in self.fused})
            if options["sda"]
            else None
        )
        self.num_features = sum(shapes[role][0] for role in self.fused)
        self.dropout = nn.Dropout(options["dropout"])
        self.classifier = nn.Linear(self.num_features, num_classes)

    def prepare(self, data: PrepareData) -> dict[str, Any] | None:
        """Per-channel mean and std of every stage map over train windows."""
        for role in ROLES:
            sample = data.sample(role, SAMPLE_CLIPS).astype(np.float64)
            axes = (0, *range(2, sample.ndim))
            std = sample.std(axis=axes)
            floor = max(float(np.median(std)) * 1e-3, 1e-6)
            getattr(self, f"{role}_mean").copy_(torch.from_numpy(sample.mean(axis=axes)))
            getattr(self, f"{role}_std").copy_(torch.from_numpy(np.maximum(std, floor)))
        return {"input_statistics": f"per-channel, {SAMPLE_CLIPS} train windows at most per stage"}

    def clip_features(self, maps: dict[str, Tensor]) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """Fused embedding (N, num_features) of N clips' stage maps (N, C, T, H, W), with the
        temporal and spatial attention maps of every stage that has them."""
        z = {
            role: (maps[role] - getattr(self, f"{role}_mean").view(-1, 1, 1, 1))
            / getattr(self, f"{role}_std").view(-1, 1, 1, 1)
            for role in ROLES
        }
        fused = {role: z[role] for role in self.fused}
        temporal: list[Tensor] = []
        spatial: list[Tensor] = []
        if self.tda is not None:
            branch = self.stem(z[ROLES[0]])
            for role, block in zip(ROLES, self.tda):
                z_t, branch, attn = block(z[role], branch)
                temporal.append(attn)
                if z_t is not None:
                    fused[role] = fused[role] + z_t
            fused[ROLES[-1]] = fused[ROLES[-1]] + branch
        if self.sda is not None:
            for role in self.fused:
                z_s, attn = self.sda[role](z[role])
                spatial.append(attn)
                fused[role] = fused[role] + z_s
        embedding = torch.cat([fused[role].mean(dim=(2, 3, 4)) for role in self.fused], dim=1)
        return embedding, temporal, spatial

    def _train_windows(self, batch: HeadBatch) -> dict[str, Tensor]:
        """One random valid window per video (§4.1: a random continuous segment)."""
        lengths = batch.lengths[ROLES[0]].to(batch.inputs[ROLES[0]].device)
        pick = torch.minimum((torch.rand(len(lengths), device=lengths.device) * lengths).long(), lengths - 1)
        rows = torch.arange(len(lengths), device=lengths.device)
        return {role: batch.inputs[role][rows, pick] for role in ROLES}

    def forward_features(self, batch: HeadBatch) -> Tensor:
        """Training: a random window's embedding. Evaluation: the mean over valid windows."""
        if self.training:
            return self.clip_features(self._train_windows(batch))[0]
        mask = batch.mask(ROLES[0])
        embedding = self.clip_features({role: batch.inputs[role][mask] for role in ROLES})[0]
        video = mask.nonzero()[:, 0]
        total = embedding.new_zeros(mask.shape[0], embedding.shape[1]).index_add_(0, video, embedding)
        return total / mask.sum(dim=1, keepdim=True).clamp(min=1).to(total.dtype)

    def forward_head(self, embedding: Tensor) -> Tensor:
        return self.classifier(self.dropout(embedding))

    def training_loss(self, batch: HeadBatch) -> tuple[Tensor, Tensor]:
        """Eq. 9: cross-entropy + λ1·L_s + λ2·L_t on one random window per video."""
        embedding, temporal, spatial = self.clip_features(self._train_windows(batch))
        logits = self.forward_head(embedding)
        loss = F.cross_entropy(logits.float(), batch.labels)
        if self.config["lambda_s"] > 0:
            loss = loss + self.config["lambda_s"] * diversity(spatial)
        if self.config["lambda_t"] > 0:
            loss = loss + self.config["lambda_t"] * diversity(temporal)
        return loss, logits
