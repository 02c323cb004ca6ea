"""CLIP ViT image tower applied per frame (Radford et al., 2021): ViT-B/32, B/16, L/14, L/14-336.

Each frame is cut into P × P patches by one bias-free Conv2d, a learned class token is
prepended, learned position embeddings are added, ``ln_pre`` normalises the sequence
(the one place CLIP's ViT differs from timm's), the pre-norm blocks run, and the class
token after ``ln_post`` is projected into the joint image-text space by ``proj``. Two
layers are cached per frame:

* ``pool``: the projected image embedding (512 for B/32 and B/16, 768 for L/14), what
  CLIP compares with text; named ``pool`` so every head, ``vpipe encode`` and
  ``vpipe index`` read it without a ``--layer`` option;
* ``cls``: the class token after ``ln_post``, before the projection (768 / 1024 wide).

The input kind is ``frames``: a clip's frames go through the tower one by one and come
back as its time steps, the per-step sequence the temporal heads read.

Checkpoints, detected from their keys and loaded strictly (the text tower of a full
CLIP checkpoint is dropped, nothing else):

* OpenAI's (``visual.conv1``, ``visual.class_embedding``, ``visual.positional_embedding``,
  ``visual.transformer.resblocks.N.attn.in_proj_weight``, ``visual.proj``), as a plain
  state dict or as the released TorchScript ``.pt`` archive. The archive is code: it is
  read with ``torch.jit.load`` only when asked with ``torchscript=True``
  (``-o torchscript=true``); otherwise loading stops and says so;
* open_clip's ``.bin`` / ``.safetensors``, which use OpenAI's names;
* ``transformers`` ``CLIPVisionModelWithProjection`` or ``CLIPModel``
  (``vision_model.embeddings.patch_embedding``, ``vision_model.encoder.layers.N.self_attn.q_proj``,
  ``visual_projection``), whose separate q/k/v projections are fused here.

The activation cannot be read from the keys: OpenAI's weights (and ``transformers``'
``openai/clip-vit-*`` conversions, ``hidden_act="quick_gelu"``) need QuickGELU, the
default; open_clip's own trainings (LAION, DataComp) and their ``transformers``
conversions use the exact GELU: pass ``activation="gelu"``. Normalisation is OpenAI's
published CLIP mean/std; LayerNorm epsilon is 1e-5 throughout, as in both references.
Frames of another size get the position table bicubically resized to their patch grid,
as ``transformers`` does with ``interpolate_pos_encoding=True``; the defaults never need it.

The ``flow`` stream takes a stack of L flow fields as 2L channels with TSN's flow
normalisation and a cross-modality first conv, as the 2-D ResNets do.

Default size ViT-B/32, the per-frame CLIP of video_features and CLIP4Clip.

Default plan (:data:`PLAN`): 8 frames per clip sampled uniformly over the whole video
(the ``uniform`` sampler), the per-frame protocol of the CLIP video classifiers (X-CLIP's
and ActionCLIP's 8-frame models, TSN's 8 segments; CLIP4Clip takes 12), each frame
resized to a short side of 224 and centre-cropped to 224², OpenAI's preprocessing
(``Resize(224)``, ``CenterCrop(224)``; vpipe resizes bilinearly where OpenAI's is
bicubic). Eight frames are chosen over twelve as the common count of the action
classifiers, which is vpipe's use. ViT-L/14-336 was trained at 336²: give its plan
``-o size=336 -o short_side=336``.
The published OpenAI CLIP weights are MIT-licensed; open_clip's differ per training set.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpipe.errors import ConfigError, WeightsError
from vpipe.models.backbones.registry import BackboneSpec, check_input, finalize_spec, register_backbone
from vpipe.models.vit import ACTIVATIONS, Block, FusedQkv
from vpipe.models.weights import adapt_input_conv, read_state_dict

#: OpenAI's published CLIP preprocessing (``clip.py``'s ``Normalize``).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
FLOW_MEAN = 0.5
FLOW_STD = (0.229 + 0.224 + 0.225) / 3
#: (width, depth, patch, image size, embedding width) of OpenAI's ViT image towers; 64-wide heads.
SIZES = {
    "b32": (768, 12, 32, 224, 512),
    "b16": (768, 12, 16, 224, 512),
    "l14": (1024, 24, 14, 224, 768),
    "l14-336": (1024, 24, 14, 336, 768),
}
HEAD_WIDTH = 64
#: The default plan: (sampler, options), see the module docstring.
PLAN = ("uniform", {"count": 8, "size": 224, "short_side": 224})
LAYOUTS = (
    "OpenAI / open_clip CLIP (visual.conv1, visual.transformer.resblocks.N, visual.proj) or "
    "transformers CLIPVisionModelWithProjection (vision_model.*, visual_projection)"
)
_OPENAI_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.(.+)$")
_OPENAI_RENAMES = {
    "ln_1.": "norm1.",
    "ln_2.": "norm2.",
    "attn.in_proj_weight": "attn.qkv.weight",
    "attn.in_proj_bias": "attn.qkv.bias",
    "attn.out_proj.": "attn.proj.",
    "mlp.c_fc.": "mlp.fc1.",
    "mlp.c_proj.": "mlp.fc2.",
}
#: The text tower of a full CLIP checkpoint (and OpenAI's archive's hyper-parameter
#: buffers): dropped by name, so any other stray key still fails the strict load.
_TEXT_KEYS = {
    "positional_embedding", "text_projection", "logit_scale", "input_resolution", "context_length", "vocab_size",
    "text_projection.weight", "attn_mask",
}  # fmt: skip
_OPENAI_TEXT_PREFIXES = ("transformer.", "token_embedding.", "ln_final.")
_HF_TEXT_PREFIXES = ("text_model.",)
_HF_BLOCK = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_HF_RENAMES = {
    "layer_norm1.": "norm1.",
    "layer_norm2.": "norm2.",
    "self_attn.out_proj.": "attn.proj.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
}
_HF_TOP = {
    "embeddings.class_embedding": "class_embedding",
    "embeddings.patch_embedding.weight": "conv1.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "pre_layrnorm.weight": "ln_pre.weight",
    "pre_layrnorm.bias": "ln_pre.bias",
    "post_layernorm.weight": "ln_post.weight",
    "post_layernorm.bias": "ln_post.bias",
}


class CLIPVision(nn.Module):
    """CLIP's ViT image tower, module names as OpenAI's ``VisionTransformer`` outside the blocks."""

    def __init__(
        self, spec: BackboneSpec, width: int, depth: int, heads: int, patch: int, embed: int, activation: str
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"clip: activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        grid = (spec.input_size[0] // patch) * (spec.input_size[1] // patch)
        self.patch = patch
        self.conv1 = nn.Conv2d(spec.in_channels, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=1e-5)
        self.blocks = nn.ModuleList(Block(width, heads, eps=1e-5, act=activation) for _ in range(depth))
        self.ln_post = nn.LayerNorm(width, eps=1e-5)
        self.proj = nn.Parameter(torch.zeros(width, embed))
        self.num_features = embed
        self.spec = finalize_spec(spec, self)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"pool": (N, embed), "cls": (N, width)}`` for frames (N, C, H, W), H and W multiples of the patch."""
        check_input(self, x)
        tokens = self.conv1(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        grid = (x.shape[2] // self.patch, x.shape[3] // self.patch)
        tokens = torch.cat((cls, tokens), dim=1) + self._positions(grid).to(tokens.dtype)
        tokens = self.ln_pre(tokens)
        for block in self.blocks:
            tokens = block(tokens)
        cls = self.ln_post(tokens[:, 0])
        return {"pool": cls @ self.proj.to(cls.dtype), "cls": cls}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_features(x)

    def _positions(self, grid: tuple[int, int]) -> Tensor:
        """The learned table, bicubically resized when the frame's patch grid is not the
        checkpoint's (as ``transformers``' ``interpolate_pos_encoding=True`` does)."""
        table = self.positional_embedding
        trained = (self.spec.input_size[0] // self.patch, self.spec.input_size[1] // self.patch)
        if grid == trained:
            return table
        patches = table[1:].reshape(1, *trained, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        return torch.cat((table[:1], patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)))


def _is_text_tower(key: str, prefixes: tuple[str, ...]) -> bool:
    return key in _TEXT_KEYS or key.startswith(prefixes)


def convert_openai(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """OpenAI / open_clip names → the module's: the text tower dropped, blocks renamed."""
    if any(k.startswith("visual.") for k in state):
        state = {
            k.removeprefix("visual."): v for k, v in state.items() if not _is_text_tower(k, _OPENAI_TEXT_PREFIXES)
        }
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        match = _OPENAI_BLOCK.match(key)
        if match is not None:
            index, rest = match.groups()
            for old, new in _OPENAI_RENAMES.items():
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            key = f"blocks.{index}.{rest}"
        out[key] = value
    return out


def convert_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``transformers`` CLIP vision names → the module's; q/k/v fuse into qkv, the projection
    ``Linear`` weight (embed, width) becomes OpenAI's ``proj`` (width, embed)."""
    out: dict[str, Tensor] = {}
    qkv = FusedQkv(r"^self_attn\.([qkv])_proj\.(weight|bias)$", ("q", "k", "v"), "CLIP")
    for key, value in state.items():
        if key == "visual_projection.weight":
            out["proj"] = value.t().contiguous()
            continue
        if _is_text_tower(key, _HF_TEXT_PREFIXES) or key.endswith("position_ids"):
            continue  # the text tower of a full CLIPModel, and a saved index buffer
        key = key.removeprefix("vision_model.")
        match = _HF_BLOCK.match(key)
        if match is None:
            out[_HF_TOP.get(key, key)] = value
            continue
        index, rest = match.groups()
        if qkv.take(index, rest, value):
            continue
        for old, new in _HF_RENAMES.items():
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        out[f"blocks.{index}.{rest}"] = value
    return out | qkv.fused()


def is_transformers_layout(state: dict[str, Tensor]) -> bool:
    """Whether ``state`` uses the ``transformers`` names (decided from the keys alone)."""
    return any(k.startswith("vision_model.") for k in state)


def clip_filter(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Either layout → the module's names; an RGB patch embedding adapted to a flow input."""
    state = convert_transformers(state) if is_transformers_layout(state) else convert_openai(state)
    return adapt_input_conv(state, "conv1.weight", model.spec.in_channels)


def is_torchscript_archive(path: Path) -> bool:
    """Whether ``path`` is a TorchScript zip (it carries compiled code next to the tensors)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith("code/") for name in archive.namelist())


def read_clip_checkpoint(path: Path, *, torchscript: bool) -> dict[str, Tensor]:
    """A state dict from a plain checkpoint, or from OpenAI's TorchScript archive when allowed.

    ``torch.jit.load`` compiles and can run the archive's code, which a weights file
    otherwise never gets to do, so it needs the explicit ``torchscript`` request.
    """
    if path.is_file() and is_torchscript_archive(path):
        if not torchscript:
            raise WeightsError(
                f"weights file {path} is a TorchScript archive (OpenAI's released .pt): loading it runs its code; "
                "pass -o torchscript=true to allow that, or convert it to a state dict first"
            )
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated for new models, but it is how these weights ship.
                warnings.simplefilter("ignore", DeprecationWarning)
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise WeightsError(f"cannot read TorchScript archive {path}: {exc}") from exc
        return {k: v.detach() for k, v in module.state_dict().items()}
    return read_state_dict(path)


def _shape_fn(width: int, embed: int):
    def shapes(input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        return {"pool": (embed,), "cls": (width,)}

    return shapes


@register_backbone("clip", plan=PLAN)
def clip(
    *,
    stream: str = "rgb",
    size: str = "b32",
    activation: str = "quickgelu",
    torchscript: bool = False,
    flow_stack: int = 5,
) -> CLIPVision:
    """CLIP ViT image tower per frame (``size`` = b32|b16|l14|l14-336); ``activation`` =
    quickgelu (OpenAI) | gelu (open_clip's own trainings); ``torchscript`` allows OpenAI's
    TorchScript archive; ``flow_stack`` = L flow fields per flow input (TSN: 5)."""
    if size not in SIZES:
        raise ConfigError(f"clip: size must be one of {', '.join(SIZES)}, got {size!r}")
    if flow_stack < 1:
        raise ConfigError(f"clip: flow_stack must be >= 1, got {flow_stack}")
    width, depth, patch, image, embed = SIZES[size]
    rgb = stream == "rgb"
    spec = BackboneSpec(
        name="clip",
        stream=stream,
        input_kind="frames",
        in_channels=3 if rgb else 2 * flow_stack,
        clip_length=1 if rgb else flow_stack,
        input_size=(image, image),
        mean=CLIP_MEAN if rgb else (FLOW_MEAN,) * 2 * flow_stack,
        std=CLIP_STD if rgb else (FLOW_STD,) * 2 * flow_stack,
        layers=("pool", "cls"),
        shape_fn=_shape_fn(width, embed),
        checkpoint_layout=LAYOUTS,
        first_conv="conv1.weight",
        checkpoint_filter=clip_filter,
        checkpoint_reader=partial(read_clip_checkpoint, torchscript=bool(torchscript)),
    )
    return CLIPVision(spec, width, depth, width // HEAD_WIDTH, patch, embed, activation)
