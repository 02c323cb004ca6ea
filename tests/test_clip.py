"""CLIP image tower: parity with ``transformers`` in every supported checkpoint layout.

The reference is ``CLIPVisionModelWithProjection`` (a test-only dependency) built from a
tiny random config. Its state dict is saved as ``model.safetensors`` in its own layout,
as a full ``CLIPModel`` (text tower included), and, through a key conversion written here
from OpenAI's ``model.py`` naming independently of vpipe's, as OpenAI's plain state dict,
OpenAI's TorchScript archive and open_clip's ``.safetensors``. vpipe loads each strictly
and must reproduce the projected embedding and the pre-projection class token to 1e-5.
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vpipe.errors import WeightsError
from vpipe.models import backbone
from vpipe.models.backbones import clip as cl
from vpipe.models.weights import load_weights

transformers = pytest.importorskip("transformers")

TINY = {"width": 64, "depth": 2, "heads": 4, "patch": 8, "size": 32, "embed": 48}
HF_ACT = {"quickgelu": "quick_gelu", "gelu": "gelu"}


def _tiny_vpipe(activation: str = "quickgelu", torchscript: bool = False) -> cl.CLIPVision:
    """vpipe's CLIP tower at the tiny size, with the registered builder's spec otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = backbone("clip", torchscript=torchscript).spec
    spec = replace(spec, input_size=(TINY["size"], TINY["size"]))
    return cl.CLIPVision(
        spec, TINY["width"], TINY["depth"], TINY["heads"], TINY["patch"], TINY["embed"], activation
    ).eval()


def _reference(activation: str = "quickgelu"):
    """A random tiny ``CLIPVisionModelWithProjection``, an input batch and its two outputs."""
    config = transformers.CLIPVisionConfig(
        hidden_size=TINY["width"], intermediate_size=4 * TINY["width"], num_hidden_layers=TINY["depth"],
        num_attention_heads=TINY["heads"], image_size=TINY["size"], patch_size=TINY["patch"],
        projection_dim=TINY["embed"], hidden_act=HF_ACT[activation], layer_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    model = transformers.CLIPVisionModelWithProjection(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name or "layrnorm" in name or "layernorm" in name or name.endswith("bias"):
                p.normal_(0.0, 0.1).add_(1.0 if name.endswith("weight") else 0.0)
    x = torch.randn(3, 3, TINY["size"], TINY["size"], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(pixel_values=x)
        cls = model.vision_model.post_layernorm(out.last_hidden_state[:, 0])
    return model, x, out.image_embeds, cls


def _openai_layout(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """OpenAI's full CLIP state dict (model.py's names), the text tower stubbed with a few keys."""
    out = {
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": hf["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": hf["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": hf["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": hf["vision_model.post_layernorm.bias"],
        "visual.proj": hf["visual_projection.weight"].t().contiguous(),
        "positional_embedding": torch.zeros(77, 32),
        "text_projection": torch.zeros(32, TINY["embed"]),
        "logit_scale": torch.tensor(4.6052),
        "token_embedding.weight": torch.zeros(100, 32),
        "transformer.resblocks.0.attn.in_proj_weight": torch.zeros(96, 32),
        "ln_final.weight": torch.ones(32),
    }
    for i in range(TINY["depth"]):
        src, dst = f"vision_model.encoder.layers.{i}.", f"visual.transformer.resblocks.{i}."
        for part in ("weight", "bias"):
            out[dst + "attn.in_proj_" + part] = torch.cat([hf[f"{src}self_attn.{n}_proj.{part}"] for n in "qkv"])
            for theirs, ours in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                                 ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
                out[f"{dst}{ours}.{part}"] = hf[f"{src}{theirs}.{part}"]
    return out


def _load(path: Path, activation: str = "quickgelu", torchscript: bool = False) -> cl.CLIPVision:
    model = _tiny_vpipe(activation, torchscript)
    info = load_weights(model, path, strict=True)
    assert not (info.missing or info.unexpected or info.mismatched)
    return model.eval()


def _assert_parity(model: cl.CLIPVision, x: torch.Tensor, embeds: torch.Tensor, cls: torch.Tensor) -> None:
    with torch.no_grad():
        got = model(x)
    assert (got["pool"] - embeds).abs().max().item() <= 1e-5
    assert (got["cls"] - cls).abs().max().item() <= 1e-5


@pytest.mark.parametrize("activation", ["quickgelu", "gelu"])
def test_transformers_layout_matches_reference(tmp_path: Path, activation: str) -> None:
    model, x, embeds, cls = _reference(activation)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    _assert_parity(_load(path, activation), x, embeds, cls)


def test_full_transformers_clipmodel_drops_the_text_tower(tmp_path: Path) -> None:
    model, x, embeds, cls = _reference()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state.update({"text_model.embeddings.token_embedding.weight": torch.zeros(100, 32),
                  "text_projection.weight": torch.zeros(TINY["embed"], 32), "logit_scale": torch.tensor(2.0),
                  "vision_model.embeddings.position_ids": torch.arange(17)[None]})
    path = tmp_path / "clip_full.safetensors"
    save_file(state, str(path))
    _assert_parity(_load(path), x, embeds, cls)


def test_openai_state_dict_matches_reference(tmp_path: Path) -> None:
    model, x, embeds, cls = _reference()
    path = tmp_path / "ViT-tiny.pt"
    torch.save(_openai_layout(model.state_dict()), path)
    _assert_parity(_load(path), x, embeds, cls)


def test_open_clip_safetensors_with_gelu_matches_reference(tmp_path: Path) -> None:
    model, x, embeds, cls = _reference("gelu")
    path = tmp_path / "open_clip_model.safetensors"
    save_file(_openai_layout(model.state_dict()), str(path))
    _assert_parity(_load(path, "gelu"), x, embeds, cls)
    # The same weights under the wrong activation are a different network.
    with torch.no_grad():
        assert (_load(path, "quickgelu")(x)["pool"] - embeds).abs().max().item() > 1e-3


class _StateHolder(torch.nn.Module):
    """A scriptable module whose state dict is the given flat dict, as OpenAI's archive holds."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for key, value in state.items():
            owner = self
            *path, leaf = key.split(".")
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, torch.nn.Module())
                owner = getattr(owner, part)
            owner.register_parameter(leaf, torch.nn.Parameter(value.clone(), requires_grad=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_openai_torchscript_archive_loads_only_when_asked(tmp_path: Path) -> None:
    model, x, embeds, cls = _reference()
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.script(_StateHolder(_openai_layout(model.state_dict()))).save(str(path))
    with pytest.raises(WeightsError, match=r"TorchScript archive.*-o torchscript=true"):
        _load(path)
    _assert_parity(_load(path, torchscript=True), x, embeds, cls)


def test_wrong_family_names_the_first_key_and_the_layouts(tmp_path: Path) -> None:
    model, _, _, _ = _reference()
    state = _openai_layout(model.state_dict())
    del state["visual.transformer.resblocks.1.attn.in_proj_weight"]
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"OpenAI / open_clip.*missing 1: blocks\.1\.attn\.qkv\.weight"):
        _load(path)
    stray = {**_openai_layout(model.state_dict()), "visual.attnpool.k_proj.weight": torch.zeros(4, 4)}
    torch.save(stray, path)
    with pytest.raises(WeightsError, match=r"unexpected 1: attnpool\.k_proj\.weight"):
        _load(path)
    hf_stray = {**{k: v.contiguous() for k, v in model.state_dict().items()}, "vision_head.weight": torch.zeros(2)}
    save_file(hf_stray, str(tmp_path / "stray.safetensors"))
    with pytest.raises(WeightsError, match=r"unexpected 1: vision_head\.weight"):
        _load(tmp_path / "stray.safetensors")
    videomae_like = {"patch_embed.proj.weight": torch.zeros(64, 3, 2, 16, 16), "fc_norm.weight": torch.ones(64)}
    torch.save(videomae_like, path)
    with pytest.raises(WeightsError, match=r"transformers CLIPVisionModelWithProjection.*missing .*conv1\.weight"):
        _load(path)


def test_other_frame_sizes_interpolate_like_transformers(tmp_path: Path) -> None:
    model, _, _, _ = _reference()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    x = torch.randn(2, 3, 48, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = model(pixel_values=x, interpolate_pos_encoding=True).image_embeds
        got = _load(path)(x)["pool"]
    assert (got - expected).abs().max().item() <= 1e-5


def _hf_config(size: str):
    width, depth, patch, image, embed = cl.SIZES[size]
    return transformers.CLIPVisionConfig(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=depth, num_attention_heads=width // 64,
        image_size=image, patch_size=patch, projection_dim=embed, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )


@pytest.mark.parametrize("size", sorted(cl.SIZES))
def test_published_sizes_match_transformers_on_meta_device(size: str) -> None:
    """Every published size has exactly the key set and shapes of the reference at that size
    (the configs of openai/clip-vit-*), and its parameter count."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = cl.clip(size=size)
        reference = transformers.CLIPVisionModelWithProjection(_hf_config(size))
    converted = cl.convert_transformers(reference.state_dict())
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert ours.spec.num_params == sum(p.numel() for p in reference.parameters())
    if size == "b32":
        assert ours.spec.num_params == 87_849_216  # OpenAI ViT-B/32's image tower
    assert ours.spec.layer_shapes() == {"pool": (cl.SIZES[size][4],), "cls": (cl.SIZES[size][0],)}
