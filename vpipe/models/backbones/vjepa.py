"""V-JEPA video encoders (Bardes et al., 2024) and V-JEPA 2 (Assran et al., 2025): ViT-L/16, ViT-H/16.

The clip (3 × 16 × 224 × 224 by default) is cut into 2 × 16 × 16 tubelets by one Conv3d,
the pre-norm blocks run over all tubelet tokens and a final LayerNorm (``norm``, eps 1e-6)
closes the encoder. Its per-token output is what the papers' attentive probe reads
frozen; the cache keeps

* ``pool``: the mean of those tokens (1024 / 1280 wide for L / H), the vector every
  per-clip head, ``vpipe encode`` and ``vpipe index`` read;
* ``grid`` (with ``grid=True``): the tokens themselves as (width, T/2, H/16, W/16), for
  an attentive probe trained downstream. 8 × 14 × 14 × 1024 float16 values are 3.2 MB
  per clip for ViT-L, so it is off by default.

Positions, decided by the checkpoint's keys (the module starts as V-JEPA 2, which has
no position weights, so a randomly initialised one runs at any input):

* V-JEPA (facebookresearch/jepa) adds a fixed 3-D sine-cosine table that its checkpoints
  store as ``pos_embed``; it is loaded like any weight, so inputs must make the
  checkpoint's token count;
* V-JEPA 2 stores none and rotates queries and keys instead (3-D RoPE,
  :class:`vpipe.models.vit.Rope`), which works at any grid. Its ViT-L/H were trained at
  256² (``transformers``' configs say 256 and 64 frames); the default input stays V-JEPA's
  16 × 224², the positions following the input's own grid. (``transformers`` takes the
  grid from its config instead, so the two agree whenever the input matches the config.)

Checkpoints, detected from their keys and loaded strictly:

* the official ``.pth.tar`` (``encoder``, ``target_encoder``, ``predictor``, optimiser
  state), keys prefixed ``module.`` (and ``backbone.`` by the multi-mask wrapper). The
  ``target_encoder`` is read when present, as the papers' frozen evaluations do, else the
  ``encoder``; the predictor is not part of the feature extractor;
* ``transformers`` ``VJEPA2Model`` / ``VJEPA2ForVideoClassification``
  (``encoder.embeddings.patch_embeddings.proj``, ``encoder.layer.N.attention.query`` …,
  ``encoder.layernorm``), the predictor, pooler and classifier dropped.

Default plan (:data:`PLAN`): the frozen evaluation of the V-JEPA paper on Kinetics-400
(``configs/evals/vitl16_k400_16x8x3.yaml``): 16 frames at frame step 4 in 8 clips, each
frame's short side resized to 256 (``crop_size · 256 / 224``) and centre-cropped to 224²,
the single-view evaluation transform. Choices: the 3 spatial views per clip become the
centre crop; the 8 clips are spread evenly from the first frame to the last
(:func:`vpipe.video.sampling.strided_clips`) where the reference starts one at the
beginning of each of 8 equal segments: the same count and stride, and the video's end
is covered. V-JEPA 2's probes read 256² inputs: ``-o size=256 -o short_side=292``.

Normalisation is ImageNet's mean/std, as in both repositories' evaluation transforms.
V-JEPA's and V-JEPA 2's published weights are CC-BY-NC-4.0 (V-JEPA 2's code is MIT, the
weights are not): the ``licence`` column says so.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import Tensor, nn

from vpipe.errors import ConfigError
from vpipe.models.backbones.registry import BackboneSpec, check_input, finalize_spec, register_backbone, video_vit_inputs
from vpipe.models.vit import Block, FusedQkv, Rope
from vpipe.models.weights import adapt_input_conv, read_state_dict

TUBELET = 2
PATCH = 16
#: (width, depth, heads) of the published sizes; MLP ratio 4.
SIZES = {"large": (1024, 24, 16), "huge": (1280, 32, 16)}
CHECKPOINT_KEYS = ("target_encoder", "encoder")
#: The default plan: (sampler, options), see the module docstring.
PLAN = ("strided", {"frames": 16, "step": 4, "clips": 8, "size": 224, "short_side": 256})
LAYOUTS = (
    "official V-JEPA .pth.tar (target_encoder/encoder: patch_embed, pos_embed, blocks.N.attn.qkv, norm) or "
    "transformers VJEPA2Model (encoder.embeddings.patch_embeddings, encoder.layer.N.attention.query, encoder.layernorm)"
)
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_HF_TOP = {
    "encoder.embeddings.patch_embeddings.proj.weight": "patch_embed.proj.weight",
    "encoder.embeddings.patch_embeddings.proj.bias": "patch_embed.proj.bias",
    "encoder.layernorm.weight": "norm.weight",
    "encoder.layernorm.bias": "norm.bias",
}


class VJEPA(nn.Module):
    """Tubelet embedding + ViT blocks + final LayerNorm; absolute table or 3-D RoPE."""

    def __init__(self, spec: BackboneSpec, width: int, depth: int, heads: int, *, grid: bool) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv3d(
            spec.in_channels, width, kernel_size=(TUBELET, PATCH, PATCH), stride=(TUBELET, PATCH, PATCH)
        )
        self.pos_embed: nn.Parameter | None = None
        self.blocks = nn.ModuleList(Block(width, heads, eps=1e-6) for _ in range(depth))
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.heads = heads
        self.grid = grid
        self.num_features = width
        self.spec = finalize_spec(spec, self)

    def use_absolute_positions(self, shape: tuple[int, ...]) -> None:
        """Add V-JEPA's stored table of ``shape`` (filled on load) in place of the rotation."""
        self.pos_embed = nn.Parameter(torch.zeros(shape))

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"pool": (N, width)[, "grid": (N, width, T/2, H/16, W/16)]}`` for clips (N, C, T, H, W)."""
        check_input(self, x)
        embedded = self.patch_embed.proj(x)
        shape = tuple(embedded.shape[2:])
        tokens = embedded.flatten(2).transpose(1, 2)
        rope = None
        if self.pos_embed is None:
            rope = Rope(shape, self.num_features // self.heads, device=x.device)
        elif self.pos_embed.shape[1] != tokens.shape[1]:
            raise ConfigError(
                f"{self.spec.name}: the checkpoint's position table covers {self.pos_embed.shape[1]} tokens, "
                f"the input makes {tokens.shape[1]}: use the checkpoint's clip length and size"
            )
        else:
            tokens = tokens + self.pos_embed.to(tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens, rope)
        tokens = self.norm(tokens)
        out = {"pool": tokens.mean(dim=1)}
        if self.grid:
            out["grid"] = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *shape)
        return out

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_features(x)


def read_vjepa_checkpoint(path: Path) -> dict[str, Tensor]:
    """The target encoder (else the encoder) of an official checkpoint, or a plain state dict."""
    state = read_state_dict(path, nesting=CHECKPOINT_KEYS)
    prefixes = ("module.", "backbone.")
    for prefix in prefixes:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def convert_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``transformers`` V-JEPA 2 names → the module's; the predictor and probe dropped,
    separate query/key/value fused into qkv."""
    out: dict[str, Tensor] = {}
    qkv = FusedQkv(r"^attention\.(query|key|value)\.(weight|bias)$", ("query", "key", "value"), "V-JEPA 2")
    for key, value in state.items():
        key = key.removeprefix("vjepa2.")
        if key.startswith(("predictor.", "pooler.", "classifier.")):
            continue
        match = _HF_LAYER.match(key)
        if match is None:
            out[_HF_TOP.get(key, key)] = value
            continue
        index, rest = match.groups()
        if not qkv.take(index, rest, value):
            out[f"blocks.{index}." + rest.replace("attention.proj.", "attn.proj.")] = value
    return out | qkv.fused()


def is_transformers_layout(state: dict[str, Tensor]) -> bool:
    """Whether ``state`` uses the ``transformers`` names (decided from the keys alone)."""
    return any(k.startswith(("encoder.layer.", "encoder.embeddings.", "vjepa2.")) for k in state)


def vjepa_filter(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Either layout → the module's names; a ``pos_embed`` in the file means V-JEPA's absolute
    table instead of V-JEPA 2's rotation; an RGB tubelet embedding is adapted to a flow input."""
    if is_transformers_layout(state):
        state = convert_transformers(state)
    if "pos_embed" in state and model.pos_embed is None:
        model.use_absolute_positions(tuple(state["pos_embed"].shape))
    return adapt_input_conv(state, "patch_embed.proj.weight", model.spec.in_channels)


def _shape_fn(width: int, grid: bool):
    def shapes(input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        _, frames, height, width_px = input_shape
        out = {"pool": (width,)}
        if grid:
            out["grid"] = (width, frames // TUBELET, height // PATCH, width_px // PATCH)
        return out

    return shapes


@register_backbone("vjepa", plan=PLAN)
def vjepa(*, stream: str = "rgb", size: str = "large", grid: bool = False) -> VJEPA:
    """V-JEPA / V-JEPA 2 ViT-L/16 or ViT-H/16 (``size`` = large|huge), 16 frames at 224²,
    tubelet 2×16×16; ``grid`` also caches the token grid."""
    if size not in SIZES:
        raise ConfigError(f"vjepa: size must be one of {', '.join(SIZES)}, got {size!r}")
    width, depth, heads = SIZES[size]
    spec = BackboneSpec(
        name="vjepa",
        stream=stream,
        **video_vit_inputs(stream),
        layers=("pool", "grid") if grid else ("pool",),
        shape_fn=_shape_fn(width, bool(grid)),
        checkpoint_layout=LAYOUTS,
        first_conv="patch_embed.proj.weight",
        head_keys=("predictor.", "pooler.", "classifier.", "vjepa2.predictor.", "vjepa2.pooler."),
        checkpoint_filter=vjepa_filter,
        checkpoint_reader=read_vjepa_checkpoint,
        licence="CC-BY-NC-4.0 (published V-JEPA and V-JEPA 2 weights)",
    )
    return VJEPA(spec, width, depth, heads, grid=bool(grid))
