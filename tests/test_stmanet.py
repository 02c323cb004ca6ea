"""ST-MANet head: each block against a numpy transcription of its equation, the loss, masking,
and training from the command line on a fabricated stage-map cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from vpipe.cli.train_cmd import register
from vpipe.errors import ConfigError
from vpipe.models.backbones.resnet3d import stage_shapes
from vpipe.models.heads import create_head
from vpipe.models.heads.registry import HeadBatch, PrepareData
from vpipe.models.heads.stmanet import ROLES, SpatialAttention, STMANet, TemporalAttention, diversity
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.store import ShardWriter, shard_name, write_index

TOL = 1e-5
#: Small stage maps (C, T, H, W); H != W catches a swapped spatial reshape.
SHAPES = {"stage2": (4, 8, 2, 3), "stage3": (8, 4, 2, 3), "stage4": (16, 2, 2, 3), "stage5": (32, 2, 2, 3)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- numpy references ------------------------------------------------------------------


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def softmax_rows(s: np.ndarray) -> np.ndarray:
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def conv_t3(x: np.ndarray, conv: torch.nn.Conv3d) -> np.ndarray:
    """A 3×1×1 convolution, zero-padded by one step in time: x (C, T, H, W)."""
    w, b = _np(conv.weight)[:, :, :, 0, 0], _np(conv.bias)
    padded = np.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0)))
    t = x.shape[1]
    out = sum(np.einsum("oi,ithw->othw", w[:, :, k], padded[:, k : k + t]) for k in range(3))
    return out + b[:, None, None, None]


def conv_1(x: np.ndarray, conv: torch.nn.Conv3d) -> np.ndarray:
    return np.einsum("oc,cthw->othw", _np(conv.weight)[:, :, 0, 0, 0], x) + _np(conv.bias)[:, None, None, None]


def time_rows(x: np.ndarray) -> np.ndarray:
    """(C, T, H, W) → (T, C·H·W)."""
    return x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1)


def from_time_rows(rows: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    c, t, h, w = shape
    return rows.reshape(t, c, h, w).transpose(1, 0, 2, 3)


def pool_time(x: np.ndarray, t: int) -> np.ndarray:
    return x.reshape(x.shape[0], t, x.shape[1] // t, *x.shape[2:]).mean(axis=2)


def tda_np(block: TemporalAttention, z: np.ndarray, branch: np.ndarray):
    """Eq. 1–3 for one clip: (Z_t, X, A_t)."""
    joint = np.concatenate([z, branch])
    q, k = time_rows(conv_t3(joint, block.query)), time_rows(conv_t3(joint, block.key))
    a = softmax_rows(q @ k.T / np.sqrt(q.shape[1]))
    x = conv_t3(from_time_rows(a @ time_rows(joint), joint.shape), block.branch_out)
    if block.out_size is not None:
        x = pool_time(x, block.out_size[0])
    z_t = z + conv_t3(from_time_rows(a @ time_rows(z), z.shape), block.main_out)
    return z_t, x, a


def sda_np(block: SpatialAttention, z: np.ndarray):
    """Eq. 4–5 for one clip: (Z_s, A_s), positions as rows of (H·W, C·T)."""
    c, t, h, w = z.shape
    q = conv_1(z, block.query).reshape(-1, h * w).T
    k = conv_1(z, block.key).reshape(-1, h * w).T
    a = softmax_rows(q @ k.T / np.sqrt(q.shape[1]))
    return (a @ z.reshape(c * t, h * w).T).T.reshape(c, t, h, w), a


def diversity_np(maps: list[np.ndarray]) -> float:
    """Eq. 6–7: block-mean each (N, n, n) map to the smallest n, sum cosines over i != j."""
    m = min(a.shape[-1] for a in maps)
    flat = [a.reshape(len(a), m, a.shape[1] // m, m, a.shape[2] // m).mean(axis=(2, 4)).reshape(len(a), -1) for a in maps]
    total = np.zeros(len(maps[0]))
    for i, a in enumerate(flat):
        for j, b in enumerate(flat):
            if i != j:
                total += (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(total.mean())


def head_np(head: STMANet, maps: dict[str, np.ndarray]):
    """Eq. 1–8 for one clip: the embedding and the attention maps."""
    z = {r: (maps[r] - _np(getattr(head, f"{r}_mean"))[:, None, None, None]) / _np(getattr(head, f"{r}_std"))[:, None, None, None] for r in ROLES}
    fused = {r: z[r].copy() for r in ROLES}
    branch = conv_t3(z["stage2"], head.stem)
    temporal, spatial = [], []
    for role, block in zip(ROLES, head.tda):
        z_t, branch, a = tda_np(block, z[role], branch)
        temporal.append(a)
        fused[role] += z_t
    fused["stage5"] += branch
    for role in ROLES:
        z_s, a = sda_np(head.sda[role], z[role])
        spatial.append(a)
        fused[role] += z_s
    return np.concatenate([fused[r].mean(axis=(1, 2, 3)) for r in ROLES]), temporal, spatial


def make_head(**options) -> STMANet:
    torch.manual_seed(0)
    head = create_head("st-manet", SHAPES, 3, dropout=0.0, **options)
    return head.double()


def random_maps(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {r: torch.randn(n, *s, generator=g, dtype=torch.float64) for r, s in SHAPES.items()}


# --- blocks ----------------------------------------------------------------------------


def test_temporal_attention_matches_eq_1_to_3():
    torch.manual_seed(1)
    block = TemporalAttention(8, 4, reduction=2, main=True, out_size=(2, 2, 3)).double()
    z, branch = torch.randn(2, 8, 4, 2, 3, dtype=torch.float64), torch.randn(2, 4, 4, 2, 3, dtype=torch.float64)
    z_t, x, a = block(z, branch)
    assert x.shape == (2, 8, 2, 2, 3) and a.shape == (2, 4, 4)
    for n in range(2):
        ref_z, ref_x, ref_a = tda_np(block, _np(z[n]), _np(branch[n]))
        np.testing.assert_allclose(_np(a[n]), ref_a, atol=TOL)
        np.testing.assert_allclose(_np(x[n]), ref_x, atol=TOL)
        np.testing.assert_allclose(_np(z_t[n]), ref_z, atol=TOL)


def test_spatial_attention_matches_eq_4_and_5():
    torch.manual_seed(2)
    block = SpatialAttention(6, reduction=2).double()
    z = torch.randn(2, 6, 3, 2, 3, dtype=torch.float64)
    z_s, a = block(z)
    assert a.shape == (2, 6, 6)
    for n in range(2):
        ref_z, ref_a = sda_np(block, _np(z[n]))
        np.testing.assert_allclose(_np(a[n]), ref_a, atol=TOL)
        np.testing.assert_allclose(_np(z_s[n]), ref_z, atol=TOL)


def test_fused_embedding_matches_eq_8():
    head = make_head()
    for role in ROLES:
        getattr(head, f"{role}_mean").uniform_(-1, 1)
        getattr(head, f"{role}_std").uniform_(0.5, 2)
    maps = random_maps(2)
    embedding, temporal, spatial = head.clip_features(maps)
    assert embedding.shape == (2, head.num_features) and head.num_features == 4 + 8 + 16 + 32
    for n in range(2):
        ref, ref_t, ref_s = head_np(head, {r: _np(m[n]) for r, m in maps.items()})
        np.testing.assert_allclose(_np(embedding[n]), ref, atol=TOL)
        for got, want in zip(temporal + spatial, ref_t + ref_s):
            np.testing.assert_allclose(_np(got[n]), want, atol=TOL)


def test_diversity_matches_eq_6_and_7_and_its_bounds():
    g = torch.Generator().manual_seed(3)
    maps = [torch.rand(3, n, n, generator=g, dtype=torch.float64) for n in (8, 4, 2, 2)]
    assert diversity(maps).item() == pytest.approx(diversity_np([_np(m) for m in maps]), abs=TOL)

    same = torch.softmax(torch.randn(2, 4, 4, generator=g), dim=-1)
    assert diversity([same] * 4).item() == pytest.approx(12.0, abs=TOL)  # 4·3 ordered pairs, cosine 1 each
    disjoint = []
    for stage in range(4):
        m = torch.zeros(2, 4, 4)
        m[:, stage, :] = 1.0 / 4  # each stage attends from its own row only
        disjoint.append(m)
    assert diversity(disjoint).item() == pytest.approx(0.0, abs=TOL)


def test_training_loss_is_eq_9():
    head = make_head(lambda_s=0.3, lambda_t=0.2)
    maps = random_maps(3)
    batch = HeadBatch({r: m.unsqueeze(1) for r, m in maps.items()}, {r: torch.ones(3, dtype=torch.long) for r in ROLES}, torch.tensor([0, 2, 1]))
    loss, logits = head.training_loss(batch)
    refs = [head_np(head, {r: _np(m[n]) for r, m in maps.items()}) for n in range(3)]
    w, b = _np(head.classifier.weight), _np(head.classifier.bias)
    ref_logits = np.stack([ref[0] @ w.T + b for ref in refs])
    log_p = ref_logits - np.log(np.exp(ref_logits - ref_logits.max(1, keepdims=True)).sum(1, keepdims=True)) - ref_logits.max(1, keepdims=True)
    ce = -log_p[np.arange(3), [0, 2, 1]].mean()
    l_t = diversity_np([np.stack([ref[1][i] for ref in refs]) for i in range(4)])
    l_s = diversity_np([np.stack([ref[2][i] for ref in refs]) for i in range(4)])
    np.testing.assert_allclose(_np(logits), ref_logits, atol=TOL)
    assert loss.item() == pytest.approx(ce + 0.3 * l_s + 0.2 * l_t, abs=TOL)


def test_gradients_reach_every_trainable_parameter():
    head = make_head()
    maps = random_maps(4)
    batch = HeadBatch({r: m.unsqueeze(1) for r, m in maps.items()}, {r: torch.ones(4, dtype=torch.long) for r in ROLES}, torch.tensor([0, 1, 2, 0]))
    head.training_loss(batch)[0].backward()
    missing = [name for name, p in head.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


# --- windows and padding ---------------------------------------------------------------


def padded_batch(maps: dict[str, torch.Tensor], lengths: list[int], fill: float) -> HeadBatch:
    """Windows ``maps[r][i]`` spread over videos of ``lengths``, padded with ``fill``."""
    width = max(lengths)
    inputs = {r: torch.full((len(lengths), width, *SHAPES[r]), fill, dtype=torch.float64) for r in ROLES}
    start = 0
    for v, n in enumerate(lengths):
        for r in ROLES:
            inputs[r][v, :n] = maps[r][start : start + n]
        start += n
    return HeadBatch(inputs, {r: torch.tensor(lengths) for r in ROLES}, torch.zeros(len(lengths), dtype=torch.long))


def test_evaluation_averages_valid_windows_and_ignores_padding():
    head = make_head().eval()
    maps = random_maps(6)
    lengths = [3, 1, 2]
    per_window = head.clip_features(maps)[0]
    expected = torch.stack([per_window[0:3].mean(0), per_window[3:4].mean(0), per_window[4:6].mean(0)])
    for fill in (0.0, 1e6):
        batch = padded_batch(maps, lengths, fill)
        np.testing.assert_allclose(_np(head.forward_features(batch)), _np(expected), atol=TOL)
    np.testing.assert_allclose(_np(head(padded_batch(maps, lengths, 0.0))), _np(head.forward_head(expected)), atol=TOL)


def test_training_reads_one_valid_window_per_video():
    head = make_head().train()
    maps = random_maps(4)
    batch = padded_batch(maps, [1, 3], float("nan"))
    per_window = head.clip_features(maps)[0]
    seen = set()
    for _ in range(30):
        embedding = head.forward_features(batch)
        assert torch.isfinite(embedding).all()
        np.testing.assert_allclose(_np(embedding[0]), _np(per_window[0]), atol=TOL)
        seen.add(int(torch.isclose(per_window[1:], embedding[1]).all(dim=1).nonzero()[0, 0]))
    assert seen == {0, 1, 2}


# --- options and inputs ----------------------------------------------------------------


def test_ablation_switches_remove_their_blocks_and_the_baseline_is_a_pooled_linear_probe():
    base = create_head(
        "st-manet", SHAPES, 3, tda=False, sda=False, multilevel=False, lambda_s=0.0, lambda_t=0.0, dropout=0.0
    )
    assert {name for name, _ in base.named_parameters()} == {"classifier.weight", "classifier.bias"}
    maps = {r: m.float() for r, m in random_maps(2).items()}
    np.testing.assert_allclose(_np(base.clip_features(maps)[0]), _np(maps["stage5"]).mean(axis=(2, 3, 4)), atol=TOL)
    assert STMANet.tag(STMANet.validate_options({})) == "st-manet-tda-sda-mf-div"
    assert STMANet.tag(STMANet.validate_options({"sda": False, "multilevel": False, "lambda_s": 0})) == "st-manet-tda-div"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"sda": False}, "pass -O lambda_s=0"),
        ({"multilevel": False}, "pass -O lambda_s=0"),
        ({"tda": False}, "pass -O lambda_t=0"),
        ({"dropout": 1.0}, "dropout"),
        ({"multilevel": "maybe"}, "multilevel='maybe' is not a valid bool"),
    ],
)
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        STMANet.validate_options(options)


def test_pooled_vectors_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="vpipe extract --backbone r3d50"):
        create_head("st-manet", {**SHAPES, "stage5": (2048,)}, 3)


def test_reads_the_r3d50_stage_maps_at_the_paper_input_size():
    shapes = stage_shapes((3, 32, 112, 112))
    assert [shapes[layer] for layer in ("layer1", "layer2", "layer3", "layer4")] == [
        STMANet.example_shapes[r] for r in ROLES
    ]
    per_clip = 2 * sum(int(np.prod(shape)) for shape in shapes.values())
    assert per_clip == 528_384  # float16 bytes, as the r3d50 and docs/st-manet.md state
    inputs = STMANet.input_spec(("r3d50-rgb",), STMANet.validate_options({}))
    assert [(i.role, i.layer, i.layout) for i in inputs] == [
        ("stage2", "layer1", "clips"), ("stage3", "layer2", "clips"),
        ("stage4", "layer3", "clips"), ("stage5", "layer4", "clips"),
    ]  # fmt: skip


def test_prepare_standardises_each_channel_with_train_windows():
    head = create_head("st-manet", SHAPES, 3)
    rng = np.random.default_rng(0)
    samples = {r: rng.normal(3.0, 2.0, size=(20, *s)).astype(np.float32) for r, s in SHAPES.items()}
    data = PrepareData(lambda role, limit: samples[role][:limit], lambda: iter(()), {}, 20, 0)
    head.prepare(data)
    for r in ROLES:
        np.testing.assert_allclose(getattr(head, f"{r}_mean").numpy(), samples[r].mean(axis=(0, 2, 3, 4)), atol=TOL)
        np.testing.assert_allclose(getattr(head, f"{r}_std").numpy(), samples[r].std(axis=(0, 2, 3, 4)), rtol=1e-4)


# --- command line ----------------------------------------------------------------------

CLASS_NAMES = ["Left", "Right", "Still"]


def stage_map_workspace(root: Path) -> DatasetWorkspace:
    """3 classes × 8 videos (2 test) of 1–3 windows of small r3d50-like stage maps; the
    class is a bump in a few channels of every stage plus noise."""
    rng = np.random.default_rng(0)
    ws = DatasetWorkspace(root, "fake")
    rows, manifest = [], []
    directory = ws.features_dir("r3d50-rgb")
    for label, name in enumerate(CLASS_NAMES):
        for i in range(8):
            video_id = f"{name}_{i:02d}"
            split = "test" if i >= 6 else "train"
            with ShardWriter(directory / shard_name("extract", video_id), attrs={"backbone": "r3d50"}) as writer:
                for clip in range(int(rng.integers(1, 4))):
                    arrays = {}
                    for layer, (c, t, h, w) in zip(("layer1", "layer2", "layer3", "layer4"), SHAPES.values()):
                        x = rng.normal(size=(c, t, h, w))
                        x[label :: len(CLASS_NAMES)] += 1.5
                        arrays[layer] = x
                    arrays["pool"] = arrays["layer4"].mean(axis=(1, 2, 3))
                    writer.add(video_id, clip, 0, arrays)
            rows += writer.rows
            manifest.append({"video_id": video_id, "label": label, "label_name": name, "split": split, "status": "ok"})
    write_index(directory, rows)
    pd.DataFrame(manifest).to_parquet(ws.manifest_path)
    return ws


@pytest.mark.slow
def test_trains_from_the_cli_and_evaluate_reproduces_its_metrics(tmp_path):
    ws = stage_map_workspace(tmp_path)
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    common = ["--dataset", "fake", "--workspace", str(ws.root)]
    args = [
        "--features", "r3d50-rgb", "--head", "st-manet", "-O", "reduction=4", "-O", "dropout=0.1",
        "--epochs", "8", "--batch-size", "6", "--lr", "0.003", "--threads", "1", "--device", "cpu",
        "--run-id", "stm", "--json",
    ]  # fmt: skip
    trained = runner.invoke(app, ["train", *common, *args])
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["metrics"]["accuracy"] >= 2 / 3
    config = json.loads((ws.dir / "runs" / "stm" / "config.json").read_text())
    assert [i["role"] for i in config["inputs"]] == list(ROLES)

    evaluated = runner.invoke(app, ["evaluate", *common, "--run", "stm", "--json", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    again = json.loads(evaluated.stdout)
    for key in ("accuracy", "macro_precision", "macro_recall"):
        assert again[key] == summary["metrics"][key]
