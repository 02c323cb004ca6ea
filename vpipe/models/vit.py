"""Vision-transformer building blocks shared by the transformer backbones.

One pre-norm block (LayerNorm → multi-head self-attention → residual, LayerNorm → GELU
(or CLIP's QuickGELU) MLP → residual), named as the official VideoMAE / timm checkpoints name it
(``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``) so those
load without renaming; other layouts are converted to these names by the backbone's
checkpoint filter. Attention runs through
:func:`torch.nn.functional.scaled_dot_product_attention`, which picks the fused kernel of
the device instead of materialising the N × N score matrix in Python. Blocks take an
optional :class:`Rope` for families that encode positions by rotating queries and keys.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpipe.errors import WeightsError


class Rope:
    """3-D rotary position embedding over a (t, h, w) token grid, as V-JEPA 2 rotates
    queries and keys.

    Each head's first ``3 · s`` channels (``s = 2 · ⌊⌊head_dim / 3⌋ / 2⌋``) are split into
    depth, height and width parts; part ``a`` of token ``n`` is rotated by angles
    ``pos_a(n) · 10000 ** (-j / (s / 2))``. The reference pairs channels ``(2m, 2m+1)`` for
    the rotation but indexes the angle by ``i mod s/2`` (its sine/cosine tables are tiled,
    not interleaved); that pairing is kept, since the weights were trained with it.
    Channels past ``3 · s`` pass through unrotated. Positions are those of the input's
    own grid, row-major as the patch embedding flattens it.
    """

    def __init__(self, grid: tuple[int, int, int], head_dim: int, *, device: torch.device | None = None) -> None:
        depth, height, width = grid
        self.part = 2 * ((head_dim // 3) // 2)
        ids = torch.arange(depth * height * width, device=device)
        positions = (ids // (height * width), (ids % (height * width)) // width, ids % width)
        half = self.part // 2
        omega = 1.0 / 10000 ** (torch.arange(half, dtype=torch.float32, device=device) / half)
        angles = torch.cat([(p.to(torch.float32)[:, None] * omega).repeat(1, 2) for p in positions], dim=1)
        self.cos, self.sin = angles.cos(), angles.sin()

    def apply(self, x: Tensor) -> Tensor:
        """Rotate ``x`` (batch, heads, tokens, head_dim)."""
        rotated = x[..., : 3 * self.part]
        pairs = rotated.unflatten(-1, (-1, 2))
        partner = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        out = rotated * self.cos.to(x.dtype) + partner * self.sin.to(x.dtype)
        return torch.cat((out, x[..., 3 * self.part :]), dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection.

    ``split_bias`` keeps VideoMAE's ``q_bias``/``v_bias`` parameters (the key projection
    has no bias there); otherwise the qkv linear carries a full bias, as in timm's ViT.
    """

    def __init__(self, dim: int, heads: int, *, split_bias: bool) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=not split_bias)
        if split_bias:
            self.q_bias = nn.Parameter(torch.zeros(dim))
            self.v_bias = nn.Parameter(torch.zeros(dim))
        else:
            self.q_bias = self.v_bias = None
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: Rope | None = None) -> Tensor:
        batch, tokens, dim = x.shape
        bias = self.qkv.bias
        if self.q_bias is not None:
            bias = torch.cat((self.q_bias, torch.zeros_like(self.q_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if rope is not None:
            q, k = rope.apply(q), rope.apply(k)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class QuickGELU(nn.Module):
    """``x · sigmoid(1.702 x)``: the GELU approximation OpenAI's CLIP was trained with.

    Weights trained with it lose accuracy under the exact GELU (and vice versa), so the
    activation is part of the checkpoint's identity, not an implementation detail.
    """

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": nn.GELU, "quickgelu": QuickGELU}


class Mlp(nn.Module):
    """fc1 → activation (exact GELU unless told) → fc2, the ViT feed-forward layer."""

    def __init__(self, dim: int, hidden: int, *, act: str = "gelu") -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = ACTIVATIONS[act]()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block; ``eps`` is the LayerNorm epsilon of the family and
    ``act`` the MLP activation (a key of :data:`ACTIVATIONS`)."""

    def __init__(
        self,
        dim: int,
        heads: int,
        *,
        mlp_ratio: float = 4.0,
        eps: float = 1e-6,
        split_bias: bool = False,
        act: str = "gelu",
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, split_bias=split_bias)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act=act)

    def forward(self, x: Tensor, rope: Rope | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


def sinusoid_table(positions: int, dim: int) -> Tensor:
    """The fixed 1-D sine/cosine position table of "Attention is all you need" (positions, dim).

    Column ``j`` uses frequency ``10000 ** (-2 * (j // 2) / dim)``; even columns take the
    sine and odd ones the cosine, as VideoMAE's ``get_sinusoid_encoding_table`` does.
    Computed in float64 and cast, so it equals the reference tables to float32 rounding.
    """
    position = torch.arange(positions, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim
    angles = position / torch.pow(torch.tensor(10000.0, dtype=torch.float64), exponent)
    table = torch.empty(positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.to(torch.float32)



class FusedQkv:
    """The separate query, key and value projections of a ``transformers`` checkpoint,
    gathered per block and concatenated into the fused ``attn.qkv`` of :class:`Attention`.

    ``projection`` matches the rest of a block's key and captures (part, weight|bias);
    ``order`` names the parts in the q, k, v order the fused layer stacks them in.
    """

    def __init__(self, projection: str, order: tuple[str, str, str], checkpoint: str) -> None:
        self.pattern, self.order, self.checkpoint = re.compile(projection), order, checkpoint
        self.parts: dict[str, dict[str, Tensor]] = {}

    def take(self, index: str, rest: str, value: Tensor) -> bool:
        """Keep ``value`` if block ``index``'s key ``rest`` is one of the projections."""
        match = self.pattern.match(rest)
        if match is not None:
            self.parts.setdefault(f"blocks.{index}.attn.qkv.{match.group(2)}", {})[match.group(1)] = value
        return match is not None

    def fused(self) -> dict[str, Tensor]:
        """Fused key -> the parts concatenated; a block missing a part is refused."""
        out = {}
        for key, parts in self.parts.items():
            missing = [part for part in self.order if part not in parts]
            if missing:
                raise WeightsError(f"transformers {self.checkpoint} {key} lacks the {'/'.join(missing)} projection")
            out[key] = torch.cat([parts[part] for part in self.order])
        return out
