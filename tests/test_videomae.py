"""VideoMAE backbone: parity with the reference implementations in every supported layout.

The ``transformers`` reference (``VideoMAEModel``, a test-only dependency) is built from a
tiny random config, saved as ``model.safetensors`` in its own key layout and, through a
key conversion written here independently of vpipe's, in the official repository's
``.pth`` layout (``patch_embed.proj``, ``blocks.N.attn.qkv`` + ``q_bias``/``v_bias``,
``fc_norm``, ``head``). vpipe loads each strictly and must reproduce the reference's
mean-pooled, ``fc_norm``-ed tokens to 1e-5 in float32.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vpipe.errors import WeightsError
from vpipe.models import backbone
from vpipe.models.backbones import videomae as vm
from vpipe.models.vit import sinusoid_table

transformers = pytest.importorskip("transformers")

TINY = {"width": 64, "depth": 2, "heads": 4, "frames": 4, "size": 32}


def _tiny_vpipe(**spec_changes) -> vm.VideoMAE:
    """vpipe's VideoMAE at the tiny size (the registered sizes are too big for a unit test)."""
    from dataclasses import replace

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = backbone("videomae", size="small").spec
    spec = replace(spec, clip_length=TINY["frames"], input_size=(TINY["size"], TINY["size"]), **spec_changes)
    return vm.VideoMAE(spec, TINY["width"], TINY["depth"], TINY["heads"]).eval()


def _reference() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random tiny ``transformers`` VideoMAE, its fc_norm, an input and the expected pool."""
    config = transformers.VideoMAEConfig(
        image_size=TINY["size"], num_frames=TINY["frames"], hidden_size=TINY["width"],
        num_hidden_layers=TINY["depth"], num_attention_heads=TINY["heads"],
        intermediate_size=4 * TINY["width"], layer_norm_eps=1e-6, use_mean_pooling=True, qkv_bias=True,
    )
    torch.manual_seed(0)
    model = transformers.VideoMAEModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_bias", "v_bias", "query.bias", "value.bias")) or "layernorm" in name:
                p.normal_(0.0, 0.1).add_(1.0 if name.endswith("weight") else 0.0)
    gen = torch.Generator().manual_seed(1)
    fc_w = 1 + 0.1 * torch.randn(TINY["width"], generator=gen)
    fc_b = 0.1 * torch.randn(TINY["width"], generator=gen)
    x = torch.randn(2, 3, TINY["frames"], TINY["size"], TINY["size"], generator=gen)
    with torch.no_grad():
        tokens = model(pixel_values=x.transpose(1, 2)).last_hidden_state
    expected = F.layer_norm(tokens.mean(1), (TINY["width"],), fc_w, fc_b, eps=1e-6)
    return model, torch.stack([fc_w, fc_b]), x, expected


def _official_layout(hf_state: dict[str, torch.Tensor], fc: torch.Tensor) -> dict[str, torch.Tensor]:
    """The official repository's fine-tuned key layout, written from its modeling_finetune.py."""
    out = {
        "patch_embed.proj.weight": hf_state["embeddings.patch_embeddings.projection.weight"],
        "patch_embed.proj.bias": hf_state["embeddings.patch_embeddings.projection.bias"],
        "fc_norm.weight": fc[0],
        "fc_norm.bias": fc[1],
        "head.weight": torch.zeros(400, TINY["width"]),
        "head.bias": torch.zeros(400),
    }
    for i in range(TINY["depth"]):
        hf = f"encoder.layer.{i}."
        ours = f"blocks.{i}."
        att = hf + "attention.attention."
        out[ours + "attn.qkv.weight"] = torch.cat([hf_state[att + n + ".weight"] for n in ("query", "key", "value")])
        # transformers < 5 names the biases q_bias/v_bias, >= 5 query.bias/value.bias.
        out[ours + "attn.q_bias"] = hf_state.get(att + "q_bias", hf_state.get(att + "query.bias"))
        out[ours + "attn.v_bias"] = hf_state.get(att + "v_bias", hf_state.get(att + "value.bias"))
        for src, dst in (("attention.output.dense", "attn.proj"), ("layernorm_before", "norm1"),
                         ("layernorm_after", "norm2"), ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2")):
            out[ours + dst + ".weight"] = hf_state[hf + src + ".weight"]
            out[ours + dst + ".bias"] = hf_state[hf + src + ".bias"]
    return out


def _load(path: Path) -> vm.VideoMAE:
    from vpipe.models.weights import load_weights

    model = _tiny_vpipe()
    info = load_weights(model, path, strict=True)
    assert not (info.missing or info.unexpected or info.mismatched)
    return model.eval()


def test_transformers_layout_matches_reference(tmp_path: Path) -> None:
    model, fc, x, expected = _reference()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state.update({"fc_norm.weight": fc[0], "fc_norm.bias": fc[1],
                  "classifier.weight": torch.zeros(400, TINY["width"]), "classifier.bias": torch.zeros(400)})
    # VideoMAEForVideoClassification nests the encoder under "videomae.".
    nested = {("videomae." + k if not k.startswith(("fc_norm", "classifier")) else k): v for k, v in state.items()}
    path = tmp_path / "model.safetensors"
    save_file(nested, str(path))
    with torch.no_grad():
        got = _load(path)(x)["pool"]
    assert (got - expected).abs().max().item() <= 1e-5


def test_official_layout_matches_reference(tmp_path: Path) -> None:
    model, fc, x, expected = _reference()
    path = tmp_path / "vit_b_k400_ft.pth"
    torch.save({"module": {"module." + k: v for k, v in _official_layout(model.state_dict(), fc).items()}}, path)
    with torch.no_grad():
        got = _load(path)(x)["pool"]
    assert (got - expected).abs().max().item() <= 1e-5


def test_learned_position_embedding_is_taken_from_the_checkpoint(tmp_path: Path) -> None:
    model, fc, x, _ = _reference()
    state = _official_layout(model.state_dict(), fc)
    learned = 0.5 * torch.randn(1, 2 * 2 * 2, TINY["width"])
    state["pos_embed"] = learned
    path = tmp_path / "learned.pth"
    torch.save(state, path)
    ours = _load(path)
    assert torch.equal(ours.pos_embed, learned)
    # The same weights with the sinusoid table give a different feature.
    sinusoid = _load_without_pos(tmp_path, state)
    with torch.no_grad():
        assert not torch.allclose(ours(x)["pool"], sinusoid(x)["pool"])


def _load_without_pos(tmp_path: Path, state: dict[str, torch.Tensor]) -> vm.VideoMAE:
    path = tmp_path / "fixed.pth"
    torch.save({k: v for k, v in state.items() if k != "pos_embed"}, path)
    return _load(path)


def test_sinusoid_table_equals_transformers() -> None:
    from transformers.models.videomae.modeling_videomae import get_sinusoid_encoding_table

    assert torch.allclose(sinusoid_table(50, 64)[None], get_sinusoid_encoding_table(50, 64).float(), atol=1e-6)


def test_wrong_size_names_the_key_and_the_layouts(tmp_path: Path) -> None:
    model, fc, _, _ = _reference()
    state = _official_layout(model.state_dict(), fc)
    del state["blocks.1.attn.qkv.weight"]
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"official VideoMAE.*missing 1: blocks\.1\.attn\.qkv\.weight"):
        _load(path)


@pytest.mark.parametrize("size", sorted(vm.SIZES))
def test_published_sizes_on_meta_device(size: str) -> None:
    """Every published size builds with the official key set; widths and parameter counts
    are those of ViT-S/B/L with a 2×16×16 tubelet embedding."""
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = vm.videomae(size=size)
    width, depth, _ = vm.SIZES[size]
    keys = set(model.state_dict())
    assert {"patch_embed.proj.weight", "fc_norm.weight", f"blocks.{depth - 1}.attn.q_bias"} <= keys
    assert model.state_dict()["patch_embed.proj.weight"].shape == (width, 3, 2, 16, 16)
    # Counted by hand from the official modeling_finetune.py, classifier left out:
    # tubelet conv, per block 2 LayerNorms + qkv weight + q/v biases + proj + 4x MLP, fc_norm.
    block = 2 * 2 * width + 3 * width * width + 2 * width + width * width + width + 8 * width * width + 5 * width
    assert model.spec.num_params == (3 * 2 * 16 * 16 * width + width) + depth * block + 2 * width
    if size == "base":
        assert model.spec.num_params == 86_227_200  # + the 400-way head: 86.5M, the paper's ~87M
    assert model.spec.licence.startswith("CC-BY-NC-4.0")
