"""VideoMAE ViT encoders (Tong et al., 2022) and VideoMAE V2 distilled ViT-S/B, fine-tuned layout.

The clip (3 × 16 × 224 × 224 by default) is cut into 2 × 16 × 16 tubelets by one Conv3d,
each tubelet gets a position embedding, the pre-norm transformer blocks run over all
tubelet tokens, and the fine-tuned classifiers' head reads the mean of the final tokens
through ``fc_norm`` (LayerNorm, eps 1e-6). That pooled vector is the cached ``pool``
layer (384 / 768 / 1024 wide for S / B / L); the classifier ``head`` is dropped.

Checkpoints, detected from their keys and loaded strictly:

* the official repository's ``.pth`` (``patch_embed.proj``, ``blocks.N.attn.qkv`` with
  ``q_bias``/``v_bias``, ``fc_norm``, ``head``; optionally nested under ``module``/``model``),
  which is also VideoMAE V2's distilled layout;
* Hugging Face ``transformers`` ``VideoMAEModel`` / ``VideoMAEForVideoClassification``
  (``[videomae.]embeddings.patch_embeddings.projection``,
  ``encoder.layer.N.attention.attention.query`` …), converted to the official names.

Position embeddings: the released fine-tuned models use the fixed sinusoid table, which
no checkpoint stores; a checkpoint that carries a learned ``pos_embed`` switches the
module to it while loading (the checkpoint decides, as the issue of which variant a file
holds cannot be known before reading it). For inputs whose token count differs from the
default 8 × 14 × 14 the sinusoid table is recomputed for the new count (positions stay
the flattened token index, as in the reference code); a learned table must match.

Default plan (:data:`PLAN`, what ``vpipe run`` / ``vpipe plan --backbone videomae`` sample
when no sampler is named): the paper's Kinetics-400 test protocol, 16 frames at sampling
rate 4 (``--num_frames 16 --sampling_rate 4``) in 5 clips spread over the video
(``--test_num_segment 5``), each frame's short side resized to 224 and centre-cropped to
224² (``--short_side_size 224 --input_size 224``). Two choices: the paper's three spatial
crops per clip (``--test_num_crop 3``, left/centre/right) become the centre crop alone,
its single-view validation transform, since the plan's further views are random crops;
and Kinetics' rate 4 is kept for every dataset (the Something-Something V2 models were
tested on 2 clips of segment-sampled frames): ``-o step=2 -o clips=2`` or another
sampler override it.

The published VideoMAE weights are CC-BY-NC-4.0 (non-commercial).
"""

from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from vpipe.errors import ConfigError
from vpipe.models.backbones.registry import BackboneSpec, check_input, finalize_spec, register_backbone, video_vit_inputs
from vpipe.models.vit import Block, FusedQkv, sinusoid_table
from vpipe.models.weights import adapt_input_conv

TUBELET = 2
PATCH = 16
#: (width, depth, heads) of the published sizes; MLP ratio 4 throughout.
SIZES = {"small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)}
LAYOUTS = "official VideoMAE .pth (patch_embed/blocks/fc_norm) or transformers VideoMAE (videomae.embeddings/encoder.layer)"
#: The default plan: (sampler, options), see the module docstring.
PLAN = ("strided", {"frames": 16, "step": 4, "clips": 5, "size": 224, "short_side": 224})
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_RENAMES = {
    "attention.attention.q_bias": "attn.q_bias",
    "attention.attention.v_bias": "attn.v_bias",
    # transformers >= 5 stores the same two biases on the query/value linears.
    "attention.attention.query.bias": "attn.q_bias",
    "attention.attention.value.bias": "attn.v_bias",
    "attention.output.dense.weight": "attn.proj.weight",
    "attention.output.dense.bias": "attn.proj.bias",
    "layernorm_before.weight": "norm1.weight",
    "layernorm_before.bias": "norm1.bias",
    "layernorm_after.weight": "norm2.weight",
    "layernorm_after.bias": "norm2.bias",
    "intermediate.dense.weight": "mlp.fc1.weight",
    "intermediate.dense.bias": "mlp.fc1.bias",
    "output.dense.weight": "mlp.fc2.weight",
    "output.dense.bias": "mlp.fc2.bias",
}


class VideoMAE(nn.Module):
    """Tubelet embedding + ViT blocks + mean pooling through ``fc_norm``."""

    def __init__(self, spec: BackboneSpec, width: int, depth: int, heads: int) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(
            spec.in_channels, width, kernel_size=(TUBELET, PATCH, PATCH), stride=(TUBELET, PATCH, PATCH)
        )
        self.blocks = nn.ModuleList(Block(width, heads, eps=1e-6, split_bias=True) for _ in range(depth))
        self.fc_norm = nn.LayerNorm(width, eps=1e-6)
        tokens = (spec.clip_length // TUBELET) * (spec.input_size[0] // PATCH) * (spec.input_size[1] // PATCH)
        self.register_buffer("pos_table", sinusoid_table(tokens, width)[None], persistent=False)
        self.pos_embed: nn.Parameter | None = None
        self.num_features = width
        self.spec = finalize_spec(spec, self)

    def use_learned_pos_embed(self, shape: tuple[int, ...]) -> None:
        """Replace the fixed sinusoid table by a learned one of ``shape`` (filled on load)."""
        self.pos_embed = nn.Parameter(torch.zeros(shape))

    def _positions(self, tokens: int, x: Tensor) -> Tensor:
        if self.pos_embed is not None:
            if self.pos_embed.shape[1] != tokens:
                raise ConfigError(
                    f"{self.spec.name}: the checkpoint's learned position embedding covers "
                    f"{self.pos_embed.shape[1]} tokens, the input makes {tokens}: use the checkpoint's clip size"
                )
            return self.pos_embed
        if self.pos_table.shape[1] != tokens:
            return sinusoid_table(tokens, self.num_features)[None].to(x)
        return self.pos_table.to(x)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"pool": (N, width)}`` for clips (N, C, T, H, W); T a multiple of 2, H, W of 16."""
        check_input(self, x)
        tokens = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = tokens + self._positions(tokens.shape[1], tokens)
        for block in self.blocks:
            tokens = block(tokens)
        return {"pool": self.fc_norm(tokens.mean(dim=1))}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_features(x)


def convert_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``transformers`` VideoMAE keys → official ones; separate q/k/v weights fuse into qkv."""
    out: dict[str, Tensor] = {}
    qkv = FusedQkv(r"^attention\.attention\.(query|key|value)\.(weight)$", ("query", "key", "value"), "VideoMAE")
    for key, value in state.items():
        key = key.removeprefix("videomae.")
        if key.startswith("embeddings.patch_embeddings.projection."):
            out["patch_embed.proj." + key.rsplit(".", 1)[1]] = value
            continue
        match = _HF_LAYER.match(key)
        if match is None:
            out[key] = value
            continue
        index, rest = match.groups()
        if not qkv.take(index, rest, value):
            out[f"blocks.{index}.{_HF_RENAMES.get(rest, rest)}"] = value
    return out | qkv.fused()


def is_transformers_layout(state: dict[str, Tensor]) -> bool:
    """Whether ``state`` uses the ``transformers`` names (decided from the keys alone)."""
    return any(k.startswith(("videomae.", "encoder.layer.", "embeddings.patch_embeddings.")) for k in state)


def videomae_filter(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Convert either layout to the module's names, take a learned ``pos_embed`` if present,
    and adapt an RGB tubelet embedding to a flow input."""
    if is_transformers_layout(state):
        state = convert_transformers(state)
    state = {k: v for k, v in state.items() if not k.startswith(("classifier.", "head."))}
    if "pos_embed" in state and model.pos_embed is None:
        model.use_learned_pos_embed(tuple(state["pos_embed"].shape))
    return adapt_input_conv(state, "patch_embed.proj.weight", model.spec.in_channels)


def _shape_fn(width: int):
    def shapes(input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        return {"pool": (width,)}

    return shapes


@register_backbone("videomae", plan=PLAN)
def videomae(*, stream: str = "rgb", size: str = "base") -> VideoMAE:
    """VideoMAE ViT-S/B/L (``size`` = small|base|large), 16 frames at 224², tubelet 2×16×16."""
    if size not in SIZES:
        raise ConfigError(f"videomae: size must be one of {', '.join(SIZES)}, got {size!r}")
    width, depth, heads = SIZES[size]
    spec = BackboneSpec(
        name="videomae",
        stream=stream,
        **video_vit_inputs(stream),
        layers=("pool",),
        shape_fn=_shape_fn(width),
        checkpoint_layout=LAYOUTS,
        first_conv="patch_embed.proj.weight",
        head_keys=("head.", "classifier."),
        checkpoint_filter=videomae_filter,
        licence="CC-BY-NC-4.0 (published VideoMAE weights)",
    )
    return VideoMAE(spec, width, depth, heads)
