"""``vpipe extract`` end to end with each transformer backbone, on tiny generated videos.

A tiny size is added to the family's size table for the test (the published sizes are
too big for a 2-core CI run), a random checkpoint of that size is written in the
``transformers`` layout, and the command line probes, plans and extracts a small
synthetic dataset with ``--weights``. The cache must hold one row per planned step,
carry the checkpoint's hash, and agree with the module run on the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from vpipe.cli.app import app
from vpipe.models.backbones import clip as cl
from vpipe.models.backbones import videomae as vm
from vpipe.models.backbones import vjepa as vj

transformers = pytest.importorskip("transformers")
runner = CliRunner()
#: Each backbone's own plan, shrunk: ``vpipe plan --backbone NAME`` with these ``-o``.
PLANS = {
    "clip": ["-o", "count=4", "-o", "size=32", "-o", "short_side=48"],
    "videomae": ["-o", "frames=4", "-o", "step=2", "-o", "clips=2", "-o", "size=32", "-o", "short_side=48"],
    "vjepa": ["-o", "frames=4", "-o", "step=2", "-o", "clips=1", "-o", "size=32", "-o", "short_side=48"],
}


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def _clip_checkpoint(path: Path) -> None:
    config = transformers.CLIPVisionConfig(
        hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, projection_dim=48, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    model = transformers.CLIPVisionModelWithProjection(config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


def _videomae_checkpoint(path: Path) -> None:
    config = transformers.VideoMAEConfig(
        image_size=32, num_frames=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=256, layer_norm_eps=1e-6, use_mean_pooling=True, qkv_bias=True,
    )
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in transformers.VideoMAEModel(config).state_dict().items()}
    state.update({"fc_norm.weight": torch.ones(64), "fc_norm.bias": torch.zeros(64)})
    save_file(state, str(path))


def _vjepa2_checkpoint(path: Path) -> None:
    config = transformers.VJEPA2Config(
        crop_size=32, frames_per_clip=4, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        pred_hidden_size=32, pred_num_attention_heads=4, pred_num_hidden_layers=1, num_pooler_layers=1,
    )
    torch.manual_seed(0)
    model = transformers.VJEPA2Model(config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))


CASES = {
    # name: (size table, tiny entry, checkpoint writer, {layer: per-clip shape})
    "clip": (cl.SIZES, (64, 2, 8, 32, 48), _clip_checkpoint, {"pool": (4, 48), "cls": (4, 64)}),
    "videomae": (vm.SIZES, (64, 2, 4), _videomae_checkpoint, {"pool": (64,)}),
    "vjepa": (vj.SIZES, (64, 2, 4), _vjepa2_checkpoint, {"pool": (64,)}),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_extract_with_a_tiny_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    sizes, tiny, write, shapes = CASES[name]
    monkeypatch.setitem(sizes, "tiny", tiny)
    weights = tmp_path / "model.safetensors"
    write(weights)
    ws = tmp_path / "ws"
    probe = invoke("probe", "--dataset", "synthetic", "--workspace", ws, "--videos-per-class", "3", "--workers", "0")
    plan = invoke("plan", "--dataset", "synthetic", "--workspace", ws, "--backbone", name, *PLANS[name])
    assert probe.exit_code == plan.exit_code == 0, probe.output + plan.output
    # No --plan: the backbone's own plan, plans/<name>.parquet.
    result = invoke("extract", "--dataset", "synthetic", "--workspace", ws, "--backbone", name,
                    "--weights", weights, "-o", "size=tiny", "--workers", "0", "--json", "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["stages"][0]
    assert report["failed"] == 0 and report["done"] == report["total"] > 0

    from vpipe.models import backbone
    from vpipe.models.weights import sha256_file
    from vpipe.store.reader import FeatureSet

    with FeatureSet.open(ws / "synthetic" / "features" / f"{name}-rgb") as features:
        assert features.provenance["weights_sha256"] == sha256_file(weights)
        assert features.provenance["plan"] == name
        video = features.video_ids()[0]
        arrays = features.clips(video)
    assert {k: v.shape[1:] for k, v in arrays.items()} == shapes
    assert all(np.isfinite(v).all() and v.std() > 0 for v in arrays.values())
    # The cache feeds a per-step head and a retrieval index like any other feature set.
    train = invoke("train", "--dataset", "synthetic", "--workspace", ws, "--features", f"{name}-rgb",
                   "-O", "temporal=bilstm", "-O", "aggregation=avg", "-O", "hidden=16", "--epochs", "2",
                   "--json")  # fmt: skip
    assert train.exit_code == 0, train.output
    index = invoke("index", "--dataset", "synthetic", "--workspace", ws, "--embedding", f"features:{name}-rgb", "--json")
    assert index.exit_code == 0, index.output
    if name == "clip":
        # The cached embedding is the cached class token through the checkpoint's projection.
        model = backbone("clip", size="tiny", weights=weights)
        projected = torch.from_numpy(arrays["cls"].astype(np.float32)) @ model.proj.detach()
        np.testing.assert_allclose(arrays["pool"].astype(np.float32), projected.numpy(), atol=2e-2, rtol=1e-2)


def test_backbones_lists_the_restrictive_licences() -> None:
    rows = {row["name"]: row for row in json.loads(invoke("backbones", "--json").stdout)}
    assert rows["videomae"]["licence"].startswith("CC-BY-NC-4.0")
    assert rows["vjepa"]["licence"].startswith("CC-BY-NC-4.0")
    assert rows["clip"]["licence"] == ""
    assert rows["clip"]["layers"] == {"pool": [512], "cls": [768]}
    assert rows["clip"]["input_shape"] == [3, 224, 224]
    lines = {line.split()[0]: line for line in invoke("backbones").stdout.splitlines()}
    assert "[licence: CC-BY-NC-4.0" in lines["videomae"]
    assert "licence" not in lines["clip"] and "licence" not in lines["i3d"]
