"""V-JEPA backbone: parity with the reference implementations in every supported layout.

V-JEPA 2 in the ``transformers`` layout is checked against ``VJEPA2Model`` (a test-only
dependency) built from a tiny random config. The official V-JEPA ``.pth.tar`` layout
(``target_encoder``/``encoder`` with ``module.backbone.`` prefixes, a stored ``pos_embed``)
is checked against a forward pass written here from plain tensor operations (explicit
softmax attention, no shared code with vpipe), and so is the official V-JEPA 2 layout
(the same keys without ``pos_embed``) against ``transformers``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vpipe.errors import ConfigError, WeightsError
from vpipe.models import backbone
from vpipe.models.backbones import vjepa as vj
from vpipe.models.vit import Rope
from vpipe.models.weights import load_weights

TINY = {"width": 64, "depth": 2, "heads": 4, "frames": 4, "size": 32}


def _tiny_vpipe(grid: bool = False) -> vj.VJEPA:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = backbone("vjepa", grid=grid).spec
    spec = replace(spec, clip_length=TINY["frames"], input_size=(TINY["size"], TINY["size"]))
    return vj.VJEPA(spec, TINY["width"], TINY["depth"], TINY["heads"], grid=grid).eval()


def _load(path: Path, grid: bool = False) -> vj.VJEPA:
    model = _tiny_vpipe(grid)
    info = load_weights(model, path, strict=True)
    assert not (info.missing or info.unexpected or info.mismatched)
    return model


def _random_official(pos_embed: bool) -> dict[str, torch.Tensor]:
    """A random encoder in the official key layout (jepa's ``vision_transformer.py`` names)."""
    gen = torch.Generator().manual_seed(0)
    w, tokens = TINY["width"], (TINY["frames"] // 2) * (TINY["size"] // 16) ** 2

    def rand(*shape: int, scale: float = 0.1, shift: float = 0.0) -> torch.Tensor:
        return shift + scale * torch.randn(*shape, generator=gen)

    state = {"patch_embed.proj.weight": rand(w, 3, 2, 16, 16, scale=0.02), "patch_embed.proj.bias": rand(w),
             "norm.weight": rand(w, shift=1.0), "norm.bias": rand(w)}
    if pos_embed:
        state["pos_embed"] = rand(1, tokens, w, scale=0.5)
    for i in range(TINY["depth"]):
        b = f"blocks.{i}."
        state.update({
            b + "norm1.weight": rand(w, shift=1.0), b + "norm1.bias": rand(w),
            b + "attn.qkv.weight": rand(3 * w, w, scale=w ** -0.5), b + "attn.qkv.bias": rand(3 * w),
            b + "attn.proj.weight": rand(w, w, scale=w ** -0.5), b + "attn.proj.bias": rand(w),
            b + "norm2.weight": rand(w, shift=1.0), b + "norm2.bias": rand(w),
            b + "mlp.fc1.weight": rand(4 * w, w, scale=w ** -0.5), b + "mlp.fc1.bias": rand(4 * w),
            b + "mlp.fc2.weight": rand(w, 4 * w, scale=(4 * w) ** -0.5), b + "mlp.fc2.bias": rand(w),
        })  # fmt: skip
    return state


def _reference_v1(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """V-JEPA's encoder from the checkpoint tensors alone, attention as an explicit softmax."""
    w, heads = TINY["width"], TINY["heads"]
    t = F.conv3d(x, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=(2, 16, 16))
    t = t.flatten(2).transpose(1, 2) + state["pos_embed"]
    for i in range(TINY["depth"]):
        b = f"blocks.{i}."
        h = F.layer_norm(t, (w,), state[b + "norm1.weight"], state[b + "norm1.bias"], 1e-6)
        q, k, v = (h @ state[b + "attn.qkv.weight"].T + state[b + "attn.qkv.bias"]).chunk(3, dim=-1)
        q, k, v = (z.reshape(*z.shape[:2], heads, -1).transpose(1, 2) for z in (q, k, v))
        attn = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(w // heads), dim=-1)
        o = (attn @ v).transpose(1, 2).reshape(t.shape)
        t = t + o @ state[b + "attn.proj.weight"].T + state[b + "attn.proj.bias"]
        h = F.layer_norm(t, (w,), state[b + "norm2.weight"], state[b + "norm2.bias"], 1e-6)
        h = F.gelu(h @ state[b + "mlp.fc1.weight"].T + state[b + "mlp.fc1.bias"])
        t = t + h @ state[b + "mlp.fc2.weight"].T + state[b + "mlp.fc2.bias"]
    return F.layer_norm(t, (w,), state["norm.weight"], state["norm.bias"], 1e-6)


def _input() -> torch.Tensor:
    return torch.randn(2, 3, TINY["frames"], TINY["size"], TINY["size"], generator=torch.Generator().manual_seed(1))


def _official_file(path: Path, encoder: dict[str, torch.Tensor]) -> None:
    """A training checkpoint as jepa writes it: both encoders, the predictor, optimiser state."""
    wrap = lambda s: {"module.backbone." + k: v for k, v in s.items()}  # noqa: E731
    decoy = {k: torch.zeros_like(v) for k, v in encoder.items()}
    torch.save({"encoder": wrap(decoy), "target_encoder": wrap(encoder),
                "predictor": {"module.predictor_embed.weight": torch.zeros(8, TINY["width"])},
                "opt": {"state": {}, "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0]}]},
                "epoch": 300, "loss": 0.1}, path)  # fmt: skip


def test_official_v1_layout_matches_the_independent_reference(tmp_path: Path) -> None:
    state, x = _random_official(pos_embed=True), _input()
    path = tmp_path / "vitl16.pth.tar"
    _official_file(path, state)
    model = _load(path, grid=True)
    assert model.pos_embed is not None
    with torch.no_grad():
        got = model(x)
    tokens = _reference_v1(state, x)
    assert (got["pool"] - tokens.mean(1)).abs().max().item() <= 1e-5
    grid = tokens.transpose(1, 2).reshape(2, TINY["width"], TINY["frames"] // 2, 2, 2)
    assert (got["grid"] - grid).abs().max().item() <= 1e-5


def test_v1_table_must_match_the_input(tmp_path: Path) -> None:
    path = tmp_path / "vitl16.pth.tar"
    _official_file(path, _random_official(pos_embed=True))
    with pytest.raises(ConfigError, match="position table covers 8 tokens, the input makes 16"):
        _load(path)(torch.zeros(1, 3, 2 * TINY["frames"], TINY["size"], TINY["size"]))


transformers_needed = pytest.mark.skipif(
    not hasattr(pytest.importorskip("transformers"), "VJEPA2Model"), reason="transformers without V-JEPA 2"
)


def _reference_v2():
    import transformers

    config = transformers.VJEPA2Config(
        crop_size=TINY["size"], frames_per_clip=TINY["frames"], hidden_size=TINY["width"],
        num_hidden_layers=TINY["depth"], num_attention_heads=TINY["heads"], pred_hidden_size=32,
        pred_num_attention_heads=4, pred_num_hidden_layers=1, num_pooler_layers=1,
    )
    torch.manual_seed(0)
    model = transformers.VJEPA2Model(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.normal_(0.0, 0.1).add_(1.0 if name.endswith("weight") else 0.0)
    x = _input()
    with torch.no_grad():
        tokens = model(pixel_values_videos=x.transpose(1, 2), skip_predictor=True).last_hidden_state
    return model, x, tokens


@transformers_needed
def test_transformers_v2_layout_matches_reference(tmp_path: Path) -> None:
    model, x, tokens = _reference_v2()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    ours = _load(path)
    assert ours.pos_embed is None
    with torch.no_grad():
        assert (ours(x)["pool"] - tokens.mean(1)).abs().max().item() <= 1e-5


@transformers_needed
def test_official_v2_layout_matches_reference(tmp_path: Path) -> None:
    model, x, tokens = _reference_v2()
    hf = model.state_dict()
    official = {
        "patch_embed.proj.weight": hf["encoder.embeddings.patch_embeddings.proj.weight"],
        "patch_embed.proj.bias": hf["encoder.embeddings.patch_embeddings.proj.bias"],
        "norm.weight": hf["encoder.layernorm.weight"], "norm.bias": hf["encoder.layernorm.bias"],
    }
    for i in range(TINY["depth"]):
        src, dst = f"encoder.layer.{i}.", f"blocks.{i}."
        for part in ("weight", "bias"):
            official[f"{dst}attn.qkv.{part}"] = torch.cat([hf[f"{src}attention.{n}.{part}"] for n in ("query", "key", "value")])
            for name in ("norm1", "norm2", "mlp.fc1", "mlp.fc2"):
                official[f"{dst}{name}.{part}"] = hf[f"{src}{name}.{part}"]
            official[f"{dst}attn.proj.{part}"] = hf[f"{src}attention.proj.{part}"]
    path = tmp_path / "vitl.pt"
    _official_file(path, official)
    with torch.no_grad():
        assert (_load(path)(x)["pool"] - tokens.mean(1)).abs().max().item() <= 1e-5


@transformers_needed
def test_rope_equals_transformers_rotation() -> None:
    from transformers.models.vjepa2.modeling_vjepa2 import VJEPA2RopeAttention
    import transformers

    config = transformers.VJEPA2Config(crop_size=48, frames_per_clip=6, hidden_size=96, num_attention_heads=4)
    attention = VJEPA2RopeAttention(config, 96, 4)
    qk = torch.randn(2, 4, 3 * 3 * 3, 24, generator=torch.Generator().manual_seed(3))
    expected = attention.apply_rotary_embeddings(qk, attention.get_position_ids(qk.transpose(1, 2).flatten(2)))
    assert torch.allclose(Rope((3, 3, 3), 24).apply(qk), expected, atol=1e-6)


def test_wrong_checkpoint_names_the_key_and_the_layouts(tmp_path: Path) -> None:
    state = _random_official(pos_embed=True)
    del state["blocks.1.mlp.fc2.weight"]
    path = tmp_path / "bad.pth.tar"
    _official_file(path, state)
    with pytest.raises(WeightsError, match=r"official V-JEPA.*missing 1: blocks\.1\.mlp\.fc2\.weight"):
        _load(path)
    torch.save({"epoch": 3, "opt": {}}, path)
    with pytest.raises(WeightsError, match="no state dict.*target_encoder"):
        _load(path)


@pytest.mark.parametrize("size", sorted(vj.SIZES))
def test_published_sizes_on_meta_device(size: str) -> None:
    """ViT-L/16 and ViT-H/16 with a 2×16×16 tubelet: key set, widths and parameter counts."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = vj.vjepa(size=size, grid=True)
    width, depth, _ = vj.SIZES[size]
    assert model.pos_embed is None  # V-JEPA 2's rotation until a checkpoint brings a table
    # tubelet conv + bias, per block 2 LayerNorms + qkv + proj + 4x MLP, final norm.
    block = 4 * width + (3 * width * width + 3 * width) + (width * width + width) + (8 * width * width + 5 * width)
    assert model.spec.num_params == (3 * 2 * 16 * 16 * width + width) + depth * block + 2 * width
    if size == "large":
        assert round(model.spec.num_params / 1e5) == 3039  # ViT-L's 303.9M, the papers' "300M"
    assert model.spec.layer_shapes() == {"pool": (width,), "grid": (width, 8, 14, 14)}
    assert model.spec.licence.startswith("CC-BY-NC-4.0")
