"""Backbones: layouts pinned to the reference projects' key/shape listings, forward contract,
weight loading, LI3D conversion and flow first-conv adaptation.

The fixtures under ``tests/fixtures/keys`` list every state-dict key and shape of the
reference models (pytorch-i3d ``InceptionI3d``, torchvision ``resnet50``/``resnet101``/
``vgg16``, 3D-ResNets-PyTorch ``generate_model(50)``), each naming the repository, commit,
file and constructor call it was taken from. Our modules must equal them minus the
classifier keys listed as ``head_keys``.
"""

from __future__ import annotations

import collections
import json
import math
import warnings
from functools import cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from vpipe.errors import ConfigError, WeightsError
from vpipe.models import backbone, list_backbones, load_weights, register_backbone, sha256_file
from vpipe.models.backbones.inception3d import li3d_from_i3d, same_padding
from vpipe.models.backbones.registry import backbone_inputs, inference_model

FIXTURES = Path(__file__).parent / "fixtures" / "keys"
SMALL_OPTIONS = {"resnet50": {"flow_stack": 2}, "resnet101": {"flow_stack": 2}, "vgg16": {"flow_stack": 2}}


@cache
def _model(name: str, stream: str = "rgb") -> torch.nn.Module:
    """Build each backbone once per session: the big ones take seconds to initialise."""
    torch.manual_seed(0)
    return _fresh(name, stream)


def _fresh(name: str, stream: str = "rgb") -> torch.nn.Module:
    """A new randomly initialised backbone, flow stacks kept short to stay fast."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return backbone(name, stream=stream, **(SMALL_OPTIONS.get(name, {}) if stream == "flow" else {}))


def _fixture(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def _tiny_input(model: torch.nn.Module) -> torch.Tensor:
    spec = model.spec
    shape = (spec.in_channels, 8, 64, 64) if spec.input_kind == "clip" else (spec.in_channels, 64, 64)
    return torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))


def _randomise_bn(model: torch.nn.Module) -> None:
    """Non-trivial BN statistics, so equality tests do not pass through identity BNs."""
    gen = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)


@pytest.mark.parametrize(
    ("name", "stream", "fixture"),
    [
        ("i3d", "rgb", "i3d_rgb"),
        ("i3d", "flow", "i3d_flow"),
        ("resnet50", "rgb", "resnet50"),
        ("resnet101", "rgb", "resnet101"),
        ("r3d50", "rgb", "r3d50"),
        ("vgg16", "rgb", "vgg16"),
    ],
)
def test_state_dict_matches_reference_layout(name: str, stream: str, fixture: str) -> None:
    ref = _fixture(fixture)
    head = tuple(ref["head_keys"])
    expected = {k: v for k, v in {**ref["params"], **ref["buffers"]}.items() if not k.startswith(head)}
    ours = {k: list(v.shape) for k, v in _model(name, stream).state_dict().items()}
    assert ours == expected
    head_params = sum(math.prod(s) for k, s in ref["params"].items() if k.startswith(head))
    assert _model(name, stream).spec.num_params == ref["num_params"] - head_params


def test_parameter_counts() -> None:
    # Reference counts including the classifiers, as published for torchvision/pytorch-i3d.
    assert _fixture("resnet50")["num_params"] == 25_557_032
    assert _fixture("vgg16")["num_params"] == 138_357_544
    assert _model("i3d").spec.num_params == pytest.approx(12.29e6, abs=0.01e6)
    assert _model("resnet50").spec.num_params == 23_508_032
    # LI3D, Inception 3×3×3 → 1×3×3 (to output width) + 3×1×1, BN+ReLU after each, stem kept:
    # 8.048M vs the paper's 8.16M (and I3D 12.287M vs 12.28M). The temporal-first order
    # (3×1×1 to the output width, then 1×3×3) would give 10.240M; factorising the stem's
    # 7×7×7 and Conv3d_2c too would give 7.910M.
    assert _model("li3d").spec.num_params == 8_047_904


@pytest.mark.parametrize("stream", ["rgb", "flow"])
@pytest.mark.parametrize("name", list_backbones())
def test_forward_features_contract(name: str, stream: str) -> None:
    if backbone_inputs(name, stream) != (stream,):
        pytest.skip("built from frames and flow together: tests/test_descriptors.py checks its contract")
    model = _model(name, stream)
    spec = model.spec
    x = _tiny_input(model)
    with torch.no_grad():
        features = model.forward_features(x)
    assert tuple(features) == spec.layers
    expected = spec.layer_shapes(tuple(x.shape[1:]))
    assert {k: tuple(v.shape[1:]) for k, v in features.items()} == expected
    assert len(spec.mean) == len(spec.std) == spec.in_channels
    assert spec.in_channels == {"rgb": 3, "flow": 2 if spec.input_kind == "clip" else 2 * spec.clip_length}[stream]
    assert model.num_features in {shape[-1] for shape in expected.values()} | {shape[0] for shape in expected.values()}
    assert model.weights_info.sha256 == "random"
    assert not model.training


def test_wrong_input_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="i3d-rgb expects"):
        _model("i3d").forward_features(torch.zeros(1, 2, 8, 32, 32))


def test_same_padding_matches_tensorflow_formula() -> None:
    for size in range(1, 40):
        for kernel in (1, 2, 3, 7):
            for stride in (1, 2):
                out = -(-size // stride)
                total = max((out - 1) * stride + kernel - size, 0)
                assert same_padding(size, kernel, stride) == (total // 2, total - total // 2)


def test_pool_steps_follow_clip_length() -> None:
    assert _model("i3d").spec.layer_shapes((3, 64, 224, 224)) == {"pool": (8, 1024)}
    assert _model("i3d").spec.layer_shapes((3, 13, 224, 224)) == {"pool": (2, 1024)}


def test_unknown_and_duplicate_names() -> None:
    with pytest.raises(ConfigError, match="resnet50"):
        backbone("resnet5")
    with pytest.raises(ConfigError, match="stream"):
        backbone("i3d", stream="depth")
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("i3d")(lambda **_: None)


def test_random_weights_warn_loudly() -> None:
    with pytest.warns(UserWarning, match="features are random"):
        model = backbone("li3d")
    assert model.weights_info.sha256 == "random"


def test_round_trip_pt_and_safetensors(tmp_path: Path) -> None:
    model = _model("i3d")
    _randomise_bn(model)
    x = _tiny_input(model)
    with torch.no_grad():
        reference = model(x)["pool"]
    state = model.state_dict()
    # Hara-style nesting: DataParallel prefix, optimizer and a scheduler holding a Counter.
    pt = tmp_path / "i3d.pth"
    torch.save(
        {
            "epoch": 3,
            "arch": "i3d",
            "state_dict": {f"module.{k}": v for k, v in state.items()},
            "scheduler": {"milestones": collections.Counter({50: 1})},
        },
        pt,
    )
    st = tmp_path / "i3d.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    for path in (pt, st):
        fresh = _fresh("i3d")
        info = load_weights(fresh, path, strict=True)
        assert info.sha256 == sha256_file(path) and not (info.missing or info.unexpected or info.mismatched)
        with torch.no_grad():
            assert torch.equal(fresh.eval()(x)["pool"], reference)


def test_head_keys_and_old_checkpoints_load_strictly(tmp_path: Path) -> None:
    state = {k: v for k, v in _model("i3d").state_dict().items() if not k.endswith("num_batches_tracked")}
    state["logits.conv3d.weight"] = torch.zeros(400, 1024, 1, 1, 1)
    state["logits.conv3d.bias"] = torch.zeros(400)
    path = tmp_path / "rgb_imagenet.pt"
    torch.save(state, path)
    info = load_weights(_fresh("i3d"), path)
    assert info.missing == info.unexpected == ()


def test_corrupted_checkpoint_lists_every_problem(tmp_path: Path) -> None:
    state = dict(_model("i3d").state_dict())
    state["Mixed_4b.b0.conv3d.weight"] = torch.zeros(7, 480, 1, 1, 1)
    state["Mixed_9z.extra.weight"] = torch.zeros(3)
    del state["Mixed_5c.b3b.bn.running_var"]
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(WeightsError) as err:
        load_weights(_fresh("i3d"), path)
    message = str(err.value)
    for needle in ("Mixed_4b.b0.conv3d.weight", "(7, 480, 1, 1, 1)", "Mixed_9z.extra.weight"):
        assert needle in message
    assert "missing 1: Mixed_5c.b3b.bn.running_var" in message
    info = load_weights(_fresh("i3d"), path, strict=False)
    assert info.unexpected == ("Mixed_9z.extra.weight",)
    assert info.missing == ("Mixed_5c.b3b.bn.running_var",)
    assert len(info.mismatched) == 1


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(_model("i3d"), tmp_path / "nope.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read"):
        load_weights(_model("i3d"), junk)


def test_li3d_from_i3d_reproduces_i3d_on_constant_input() -> None:
    i3d = _fresh("i3d")
    _randomise_bn(i3d)
    li3d = _fresh("li3d")
    li3d.load_state_dict(li3d_from_i3d(i3d.state_dict()))
    frame = torch.randn(1, 3, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    x = frame.expand(1, 3, 128, 32, 32).contiguous()
    with torch.no_grad():
        a, b = i3d(x)["pool"][0], li3d(x)["pool"][0]
    # "SAME" zero padding makes the clip ends non-constant, and the temporal convs carry that
    # inwards: measured, it reaches 6 of the 16 steps of a 128-frame clip from each end, so
    # steps 6..9 are untouched and must agree to float32 rounding (features are O(10) here).
    scale = float(a.abs().max())
    torch.testing.assert_close(b[6:10], a[6:10], rtol=1e-5, atol=1e-6 * scale)
    assert (a[0] - b[0]).abs().max() > 1e-4


@pytest.mark.parametrize("stream", ["rgb", "flow"])
@pytest.mark.parametrize("name", ["i3d", "li3d"])
def test_fused_inception_computes_the_reference_function(name: str, stream: str) -> None:
    """Folded BN, merged 1×1×1 units, pool/conv padding and channels-last change only rounding.

    Odd and even sizes both occur: 9 frames and 37×30 pixels give asymmetric "SAME" padding
    at the stride-2 stem and pools (the padded-copy path), 16 frames symmetric padding.
    The reference is the trainable module; a dropped BN shift or a channel-order slip in the
    merged units moves the output by O(1), far outside float32 rounding.
    """
    model = _fresh(name, stream)
    _randomise_bn(model)
    fused = model.fused()
    assert not fused.training and fused.spec == model.spec
    for frames, height, width in ((9, 37, 30), (16, 32, 32)):
        x = torch.randn(2, model.spec.in_channels, frames, height, width, generator=torch.Generator().manual_seed(4))
        with torch.inference_mode():
            expected, got = model.forward_features(x)["pool"], fused.forward_features(x)["pool"]
            control = model.forward_features(x.roll(1, dims=2))["pool"]
        assert got.shape == expected.shape
        scale = float(expected.abs().max())
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * scale)
        assert float((got - control).abs().max()) > 1e-3 * scale
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # the bf16 extraction path
        rounded = fused.forward_features(x)["pool"].float()
    assert torch.nn.functional.cosine_similarity(rounded.flatten(), expected.flatten(), dim=0) > 0.99


def test_extraction_runs_each_family_in_its_inference_form() -> None:
    """load_model serves the fused LI3D (query and cache share it); others run as built."""
    from vpipe.extract.features import load_model
    from vpipe.models.backbones.inception3d import FusedInceptionI3D

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert isinstance(load_model("li3d", "rgb", None, (), "cpu"), FusedInceptionI3D)
        assert inference_model(_model("resnet50")) is _model("resnet50")


def test_li3d_loads_an_i3d_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "rgb_imagenet.pt"
    torch.save(_model("i3d").state_dict(), path)
    model = _fresh("li3d")
    load_weights(model, path)
    kernel = _model("i3d").state_dict()["Mixed_3b.b1b.conv3d.weight"]
    torch.testing.assert_close(model.state_dict()["Mixed_3b.b1b.spatial.conv3d.weight"], kernel.sum(2, keepdim=True))


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("i3d", "Conv3d_1a_7x7.conv3d.weight"),
        ("resnet50", "conv1.weight"),
        pytest.param("vgg16", "features.0.weight", marks=pytest.mark.slow),
    ],
)
def test_rgb_checkpoint_adapts_first_conv_for_flow(tmp_path: Path, name: str, key: str) -> None:
    rgb = _model(name).state_dict()
    path = tmp_path / "rgb.pt"
    torch.save(rgb, path)
    flow = _fresh(name, "flow")
    with pytest.warns(UserWarning, match="cross-modality"):
        load_weights(flow, path)
    loaded = flow.state_dict()[key]
    channels = flow.spec.in_channels
    assert loaded.shape[1] == channels
    for c in range(channels):
        torch.testing.assert_close(loaded[:, c], rgb[key].mean(dim=1))



@pytest.mark.parametrize("name", ["i3d", "li3d", "resnet50"])
def test_random_init_is_seeded_and_keeps_features_at_a_usable_scale(name: str) -> None:
    """Every process must build the same random network, and its features must survive float16."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, second = backbone(name), backbone(name)
    for (key, a), b in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(a, b), key
    clip = first.spec.input_kind == "clip"
    generator = torch.Generator().manual_seed(0)
    x = torch.rand((2, 3, 8, 64, 64) if clip else (2, 3, 64, 64), generator=generator)
    with torch.inference_mode():
        pool = first.forward_features(x)["pool"].float()
    assert 1e-2 < float(pool.std()) < 1e3
    stored = pool.half().float()
    assert float((stored[0] - stored[1]).norm()) > 1e-3 * float(stored[0].norm())
    assert len(torch.unique(stored)) > pool.numel() // 4
