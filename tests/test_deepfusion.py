"""The ``deep-fusion`` head against numpy implementations of two-stream-deep-fusion-ln-lstm.

Every block is checked against equations written out here in numpy, one video at a time
and without padding (eq. 1 interleaving, eq. 2 conv fusion, the LN-LSTM of eq. 3–6 as the
head's docstring states it, the region attention, eq. 7–12 composed); the batched head
then has to agree on padded batches, which is what pins the masking. The end-to-end test
trains the head from the command line on a tiny fabricated cache and evaluates it.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from vpipe.cli.train_cmd import register
from vpipe.errors import ConfigError, StageError, WeightsError
from vpipe.models import backbone
from vpipe.models.backbones import vgg
from vpipe.models.heads import create_head
from vpipe.models.heads.deepfusion import (
    LNLSTM,
    AttentiveLNLSTM,
    ConvFusion,
    DeepFusion,
    RegionAttention,
    interleave_channels,
)
from vpipe.models.heads.registry import HeadBatch, PrepareData
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.store import ShardWriter, shard_name, write_index
from vpipe.train.metrics import TIMING_KEYS
from vpipe.video.sampling import flow_stack_indices, uniform_indices

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- numpy references ------------------------------------------------------------------


def _np(t: torch.Tensor) -> np.ndarray:
    """A float64 copy (never a view: tests change parameters after reading them)."""
    return t.detach().double().numpy().copy()


def np_sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def np_layer_norm(a: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Eq. 3–6 over the units of one gate (per sample, per step)."""
    mu = a.mean()
    var = ((a - mu) ** 2).mean()
    return gamma * (a - mu) / np.sqrt(var + eps) + beta


def lstm_params(cell) -> dict[str, np.ndarray]:
    return {
        "Wx": _np(cell.input_weight.weight),
        "Wh": _np(cell.hidden_weight.weight),
        "gamma": [_np(n.weight) for n in cell.gate_norms],
        "beta": [_np(n.bias) for n in cell.gate_norms],
        "bg": _np(cell.candidate_bias),
    }


def np_lstm_step(p: dict, x: np.ndarray, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = h.size
    a = p["Wx"] @ x + p["Wh"] @ h
    i = np_sigmoid(np_layer_norm(a[:n], p["gamma"][0], p["beta"][0]))
    f = np_sigmoid(np_layer_norm(a[n : 2 * n], p["gamma"][1], p["beta"][1]))
    o = np_sigmoid(np_layer_norm(a[2 * n : 3 * n], p["gamma"][2], p["beta"][2]))
    g = np.tanh(a[3 * n :] + p["bg"])
    c = f * c + i * g
    return o * np.tanh(c), c


def np_lstm(p: dict, xs: np.ndarray) -> np.ndarray:
    """Hidden states of one unpadded sequence (T, D) -> (T, H)."""
    n = p["Wh"].shape[1]
    h, c, out = np.zeros(n), np.zeros(n), []
    for x in xs:
        h, c = np_lstm_step(p, x, h, c)
        out.append(h)
    return np.array(out)


def attention_params(att: RegionAttention) -> dict[str, np.ndarray]:
    return {"Wa": _np(att.key.weight), "Ua": _np(att.query.weight), "ba": _np(att.query.bias), "v": _np(att.score.weight)[0]}


def np_attend(p: dict, cells: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """e_k = vᵀ tanh(W_a x_k + U_a q + b_a), α = softmax(e), Σ α_k x_k; cells (K, C)."""
    e = np.array([p["v"] @ np.tanh(p["Wa"] @ x + p["Ua"] @ query + p["ba"]) for x in cells])
    alpha = np.exp(e - e.max())
    alpha /= alpha.sum()
    return (alpha[:, None] * cells).sum(0), alpha


def np_attentive_lstm(p_cell: dict, p_att: dict, maps: np.ndarray, context: np.ndarray) -> np.ndarray:
    """maps (T, C, H, W), context (T, Q) -> (T, hidden)."""
    n = p_cell["Wh"].shape[1]
    h, c, out = np.zeros(n), np.zeros(n), []
    for m, q in zip(maps, context):
        cells = m.reshape(m.shape[0], -1).T
        z, _ = np_attend(p_att, cells, np.concatenate([q, h]))
        h, c = np_lstm_step(p_cell, z, h, c)
        out.append(h)
    return np.array(out)


def np_interleave(rgb: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Eq. 1 with 1-based d: y_{2d} = rgb_d, y_{2d−1} = flow_d; (T, C, H, W) -> (T, 2C, H, W)."""
    t, c, hh, ww = rgb.shape
    y = np.zeros((t, 2 * c, hh, ww))
    for d in range(1, c + 1):
        y[:, 2 * d - 1] = rgb[:, d - 1]
        y[:, 2 * d - 2] = flow[:, d - 1]
    return y


def np_conv3d(y: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Eq. 2: 3×3×3 conv over (T, H, W), zero padding 1; y (T, C, H, W), w (O, C, 3, 3, 3)."""
    t, c, hh, ww = y.shape
    pad = np.zeros((t + 2, c, hh + 2, ww + 2))
    pad[1:-1, :, 1:-1, 1:-1] = y
    out = np.zeros((t, w.shape[0], hh, ww)) + b[None, :, None, None]
    for dt in range(3):
        for di in range(3):
            for dj in range(3):
                window = pad[dt : dt + t, :, di : di + hh, dj : dj + ww]
                out += np.einsum("oc,tcij->toij", w[:, :, dt, di, dj], window)
    return out


def np_head(head: DeepFusion, rgb: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eq. 1–12 for one video (T, C, H, W) with fc6_grid = H/2: (embedding, logits)."""
    fused = np_conv3d(np_interleave(rgb, flow), _np(head.fusion.conv.weight), _np(head.fusion.conv.bias))
    t, ch, hh, ww = fused.shape
    pool5 = fused.reshape(t, ch, hh // 2, 2, ww // 2, 2).max(axis=(3, 5))
    x_fc = np.maximum(pool5.reshape(t, -1) @ _np(head.fc6.weight).T + _np(head.fc6.bias), 0.0)
    h_fc = np_lstm(lstm_params(head.fc_lstm.cell), x_fc)
    h_conv = np_attentive_lstm(
        lstm_params(head.conv_lstm.cell), attention_params(head.conv_lstm.attention), fused, h_fc
    )
    merged = np.concatenate([h_conv, h_fc], axis=1) @ _np(head.merge.weight).T + _np(head.merge.bias)
    h = np_lstm(lstm_params(head.merge_lstm.cell), merged)[-1]
    return h, _np(head.classifier.weight) @ h + _np(head.classifier.bias)


# --- helpers ---------------------------------------------------------------------------


def _randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial values everywhere (LN γ ≠ 1, β ≠ 0, biases ≠ 0), so no term hides."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def _batch(videos: list[tuple[np.ndarray, np.ndarray]], fill: float = 0.0) -> HeadBatch:
    """Pad videos of (T_i, C, H, W) rgb and flow maps to one batch (padding = ``fill``)."""
    lengths = torch.tensor([len(r) for r, _ in videos])
    longest = int(lengths.max())
    shape = videos[0][0].shape[1:]
    rgb = torch.full((len(videos), longest, *shape), fill)
    flow = torch.full((len(videos), longest, *shape), fill)
    for i, (r, f) in enumerate(videos):
        rgb[i, : len(r)] = torch.from_numpy(r).float()
        flow[i, : len(f)] = torch.from_numpy(f).float()
    return HeadBatch({"rgb": rgb, "flow": flow}, {"rgb": lengths, "flow": lengths.clone()}, torch.zeros(len(videos), dtype=torch.long))


def _maps(rng: np.random.Generator, t: int, shape: tuple[int, ...]) -> np.ndarray:
    """Post-ReLU-like maps, rounded through float32 so numpy sees what the head sees."""
    return np.maximum(rng.normal(size=(t, *shape)), 0).astype(np.float32).astype(np.float64)


SMALL = {"fused": 4, "fc6": 12, "hidden": 5, "attention": 3, "fc6_grid": 2}


# --- blocks ----------------------------------------------------------------------------


def test_ln_lstm_matches_numpy_with_masked_padding():
    torch.manual_seed(0)
    lstm = LNLSTM(6, 4).double()
    _randomise(lstm)
    rng = np.random.default_rng(0)
    lengths = [5, 3, 1]
    x = rng.normal(size=(3, 5, 6))
    mask = torch.arange(5) < torch.tensor(lengths)[:, None]
    garbage = torch.from_numpy(x).clone()
    garbage[~mask] = 7.0  # padding that is not zero must not leak either
    out, last = lstm(garbage, mask)
    p = lstm_params(lstm.cell)
    for b, n in enumerate(lengths):
        expected = np_lstm(p, x[b, :n])
        np.testing.assert_allclose(out[b, :n].detach().numpy(), expected, atol=TOL)
        np.testing.assert_array_equal(out[b, n:].detach().numpy(), 0.0)
        np.testing.assert_allclose(last[b].detach().numpy(), expected[-1], atol=TOL)


def test_channel_interleaving_element_by_element():
    rng = np.random.default_rng(2)
    rgb, flow = rng.normal(size=(2, 3, 5, 2, 2)), rng.normal(size=(2, 3, 5, 2, 2))
    y = interleave_channels(torch.from_numpy(rgb), torch.from_numpy(flow), dim=2).numpy()
    assert y.shape == (2, 3, 10, 2, 2)
    for b, t, k, i, j in np.ndindex(2, 3, 5, 2, 2):
        assert y[b, t, 2 * k, i, j] == flow[b, t, k, i, j]
        assert y[b, t, 2 * k + 1, i, j] == rgb[b, t, k, i, j]
    np.testing.assert_array_equal(y[0, 1], np_interleave(rgb[0], flow[0])[1])


def test_conv_fusion_matches_numpy_and_ignores_padded_frames():
    fusion = ConvFusion(3, 4, "random").double()
    _randomise(fusion, seed=3)
    rng = np.random.default_rng(3)
    videos = [(rng.normal(size=(4, 3, 3, 3)), rng.normal(size=(4, 3, 3, 3))), (rng.normal(size=(2, 3, 3, 3)), rng.normal(size=(2, 3, 3, 3)))]
    rgb = torch.zeros(2, 4, 3, 3, 3, dtype=torch.float64)
    flow = torch.zeros_like(rgb)
    for b, (r, f) in enumerate(videos):
        rgb[b, : len(r)], flow[b, : len(f)] = torch.from_numpy(r), torch.from_numpy(f)
    out = fusion(rgb, flow).detach().numpy()
    w, bias = fusion.conv.weight.detach().numpy(), fusion.conv.bias.detach().numpy()
    for b, (r, f) in enumerate(videos):
        np.testing.assert_allclose(out[b, : len(r)], np_conv3d(np_interleave(r, f), w, bias), atol=TOL)


def test_identity_fusion_init_is_the_mean_of_the_streams():
    fusion = ConvFusion(3, 3, "identity")
    rng = np.random.default_rng(4)
    rgb, flow = rng.normal(size=(1, 2, 3, 4, 4)), rng.normal(size=(1, 2, 3, 4, 4))
    out = fusion(torch.from_numpy(rgb).float(), torch.from_numpy(flow).float()).detach().numpy()
    np.testing.assert_allclose(out, (rgb + flow) / 2, atol=TOL)


def test_region_attention_matches_numpy():
    att = RegionAttention(4, 6, 3).double()
    _randomise(att, seed=5)
    rng = np.random.default_rng(5)
    cells, query = rng.normal(size=(2, 9, 4)), rng.normal(size=(2, 6))
    c = torch.from_numpy(cells)
    out, alpha = att(c, att.key(c), torch.from_numpy(query))
    p = attention_params(att)
    for b in range(2):
        expected, expected_alpha = np_attend(p, cells[b], query[b])
        np.testing.assert_allclose(out[b].detach().numpy(), expected, atol=TOL)
        np.testing.assert_allclose(alpha[b].detach().numpy(), expected_alpha, atol=TOL)


def test_attentive_lstm_matches_numpy_with_padding():
    lstm = AttentiveLNLSTM(3, 2, 4, 5).double()
    _randomise(lstm, seed=6)
    rng = np.random.default_rng(6)
    maps, context = rng.normal(size=(2, 4, 3, 2, 2)), rng.normal(size=(2, 4, 2))
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    out = lstm(torch.from_numpy(maps), torch.from_numpy(context), mask).detach().numpy()
    p_cell, p_att = lstm_params(lstm.cell), attention_params(lstm.attention)
    np.testing.assert_allclose(out[0], np_attentive_lstm(p_cell, p_att, maps[0], context[0]), atol=TOL)
    np.testing.assert_allclose(out[1, :2], np_attentive_lstm(p_cell, p_att, maps[1, :2], context[1, :2]), atol=TOL)
    np.testing.assert_array_equal(out[1, 2:], 0.0)


# --- the head --------------------------------------------------------------------------


def test_head_matches_numpy_equations_on_a_padded_batch():
    head = create_head("deep-fusion", {"rgb": (3, 4, 4), "flow": (3, 4, 4)}, 6, fusion_init="random", **SMALL).eval()
    _randomise(head, seed=7)
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(0.5)
    rng = np.random.default_rng(7)
    videos = [(_maps(rng, t, (3, 4, 4)), _maps(rng, t, (3, 4, 4))) for t in (5, 2, 4)]
    with torch.no_grad():
        logits, embedding = head(_batch(videos), return_embedding=True)
    for b, (r, f) in enumerate(videos):
        expected_h, expected_logits = np_head(head, r, f)
        np.testing.assert_allclose(embedding[b].numpy(), expected_h, atol=TOL)
        np.testing.assert_allclose(logits[b].numpy(), expected_logits, atol=TOL)


def test_inputs_and_output_shapes_for_t17_and_l4():
    """17 uniformly sampled frames, 4 flow fields each (8 channels), conv5_3 14×14 per frame."""
    frames = uniform_indices(120, 17)
    stacks = flow_stack_indices(frames, 120, L=4)
    assert frames.shape == (17,) and stacks.shape == (17, 5)
    head = create_head("deep-fusion", {"rgb": (4, 14, 14), "flow": (4, 14, 14)}, 101, fused=4, fc6=32, hidden=101)
    rng = np.random.default_rng(8)
    batch = _batch([(_maps(rng, 17, (4, 14, 14)), _maps(rng, 17, (4, 14, 14))) for _ in range(2)])
    fused, fc, mask = head.frame_features(batch)
    assert fused.shape == (2, 17, 4, 14, 14) and fc.shape == (2, 17, 32) and mask.all()
    logits, embedding = head(batch, return_embedding=True)
    assert logits.shape == (2, 101) and embedding.shape == (2, 101) == (2, head.num_features)


@pytest.mark.slow
def test_vgg16_caches_native_conv5_3_by_default_and_pools_on_request():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flow = backbone("vgg16", stream="flow", flow_stack=4)
    assert flow.spec.in_channels == 8
    assert flow.spec.layer_shapes() == {"conv5_3": (512, 14, 14), "fc6": (4096,)}
    with torch.no_grad():
        assert flow.forward_features(torch.rand(1, 8, 64, 64))["conv5_3"].shape == (1, 512, 4, 4)
    assert vgg._shape_fn(vgg._grid([7, 7]))((8, 224, 224))["conv5_3"] == (512, 7, 7)
    assert vgg._grid(7) == (7, 7)
    with pytest.raises(ConfigError, match="grid"):
        backbone("vgg16", grid=[7, 0])


def test_gradients_reach_every_parameter():
    head = create_head("deep-fusion", {"rgb": (4, 4, 4), "flow": (4, 4, 4)}, 3, **SMALL).train()
    rng = np.random.default_rng(10)
    batch = _batch([(_maps(rng, t, (4, 4, 4)), _maps(rng, t, (4, 4, 4))) for t in (6, 3)])
    batch.labels = torch.tensor([0, 2])
    loss, logits = head.training_loss(batch)
    loss.backward()
    assert logits.shape == (2, 3)
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_parameter_count_at_the_papers_size():
    """Fusion 3·3·3·1024·512 + 512 and Fc6 25088·4096 + 4096 (§3.6) dominate."""
    fusion = 27 * 1024 * 512 + 512
    fc6 = 25088 * 4096 + 4096
    with torch.device("meta"):
        head = DeepFusion(dict(DeepFusion.example_shapes), 101, **DeepFusion.validate_options({"fusion_init": "random"}))
    lstm = lambda d, h: 4 * h * d + 4 * h * h + 6 * h + h
    attention = 512 * 101 + 202 * 101 + 101 + 101
    rest = lstm(4096, 101) + lstm(512, 101) + attention + (202 * 101 + 101) + lstm(101, 101) + (101 * 101 + 101)
    assert sum(p.numel() for p in head.parameters()) == fusion + fc6 + rest


def test_options_and_inputs_are_checked():
    spec = DeepFusion.input_spec(("vgg16-rgb", "vgg16-flow"), DeepFusion.validate_options({}))
    assert [(s.role, s.features, s.layer, s.layout) for s in spec] == [
        ("rgb", ("vgg16-rgb",), "conv5_3", "steps"),
        ("flow", ("vgg16-flow",), "conv5_3", "steps"),
    ]
    with pytest.raises(ConfigError, match="two feature sets"):
        DeepFusion.input_spec(("vgg16-rgb",), DeepFusion.validate_options({}))
    with pytest.raises(ConfigError, match="lstm_dropout"):
        DeepFusion.validate_options({"lstm_dropout": 1.0})
    with pytest.raises(ConfigError, match="fused=3"):
        create_head("deep-fusion", {"rgb": (3, 4, 4), "flow": (3, 4, 4)}, 2, fused=4)
    with pytest.raises(ConfigError, match="equal shape"):
        create_head("deep-fusion", {"rgb": (4, 4, 4), "flow": (4, 2, 2)}, 2, fused=4)
    with pytest.raises(ConfigError, match="2 × 2"):
        create_head("deep-fusion", {"rgb": (4, 1, 1), "flow": (4, 1, 1)}, 2, fused=4)
    head = create_head("deep-fusion", {"rgb": (4, 4, 4), "flow": (4, 4, 4)}, 2, **SMALL)
    rng = np.random.default_rng(11)
    batch = _batch([(_maps(rng, 3, (4, 4, 4)), _maps(rng, 3, (4, 4, 4)))])
    batch.lengths["flow"] = torch.tensor([2])
    with pytest.raises(StageError, match="same plan"):
        head(batch)


def test_fc6_starts_from_a_vgg16_checkpoint(tmp_path: Path):
    options = DeepFusion.validate_options({"fc6_weights": str(tmp_path / "missing.pth"), **SMALL})
    with pytest.raises(StageError, match="no file"):
        DeepFusion.external_files(options, ("a", "b"), lambda f, k: tmp_path)
    head = create_head("deep-fusion", {"rgb": (4, 4, 4), "flow": (4, 4, 4)}, 2, **SMALL)
    weight, bias = torch.randn(12, 16), torch.randn(12)
    path = tmp_path / "vgg16.pth"
    torch.save({"classifier.0.weight": weight, "classifier.0.bias": bias, "classifier.6.weight": torch.zeros(3)}, path)
    options["fc6_weights"] = str(path)
    files = DeepFusion.external_files(options, ("a", "b"), lambda f, k: tmp_path)
    assert files == {"fc6_weights": path.resolve()}
    data = PrepareData(sample=None, batches=None, files=files, fit_videos=0, seed=0)  # type: ignore[arg-type]
    assert "classifier.0" in head.prepare(data)["fc6"]
    np.testing.assert_array_equal(_np(head.fc6.weight), weight.double().numpy())
    np.testing.assert_array_equal(_np(head.fc6.bias), bias.double().numpy())
    torch.save({"classifier.0.weight": torch.zeros(12, 8), "classifier.0.bias": bias}, path)
    with pytest.raises(WeightsError, match="fits fused=512"):
        head.load_fc6(path)


# --- end to end ------------------------------------------------------------------------

MAP = (4, 2, 2)


def make_map_workspace(root: Path, *, classes: int = 3, videos: int = 8, test: int = 2, seed: int = 0) -> DatasetWorkspace:
    """vgg16-rgb and vgg16-flow caches of tiny conv5_3 maps (T = 4..7 frames of 4 × 2 × 2).

    Class c lights channel c of the rgb maps in cell c (appearance) and channel c + 1 of
    the flow maps in frames after the first half only (motion that starts mid-video), on
    post-ReLU noise; train videos carry a second, noisier view.
    """
    rng = np.random.default_rng(seed)
    ws = DatasetWorkspace(root, "fake")
    rows: dict[str, list] = {"vgg16-rgb": [], "vgg16-flow": []}
    manifest = []
    for label in range(classes):
        for i in range(videos):
            video_id = f"c{label}_{i:02d}"
            split = "test" if i >= videos - test else "train"
            frames = int(rng.integers(4, 8))
            for name in rows:
                with ShardWriter(ws.features_dir(name) / shard_name("extract", video_id), attrs={"backbone": "vgg16"}) as writer:
                    for view in range(2 if split == "train" else 1):
                        maps = np.maximum(rng.normal(scale=0.5 + 0.2 * view, size=(frames, *MAP)), 0)
                        if name == "vgg16-rgb":
                            maps[:, label, label // 2, label % 2] += 2.0
                        else:
                            maps[frames // 2 :, (label + 1) % MAP[0]] += 2.0
                        writer.add(video_id, 0, view, {"conv5_3": maps, "fc6": maps.reshape(frames, -1)})
                rows[name] += writer.rows
            manifest.append({"video_id": video_id, "label": label, "label_name": f"c{label}", "split": split, "status": "ok"})
    for name, name_rows in rows.items():
        write_index(ws.features_dir(name), name_rows)
    pd.DataFrame(manifest).to_parquet(ws.manifest_path)
    return ws


@pytest.mark.slow
def test_cli_trains_and_evaluate_reproduces_the_metrics(tmp_path: Path):
    """Seconds of training; most of the time is torch's optimiser import on first use."""
    ws = make_map_workspace(tmp_path)
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    common = ["--dataset", "fake", "--workspace", str(ws.root)]
    options = ["fused=4", "fc6=16", "hidden=8", "fc6_grid=1", "fc6_dropout=0.1", "lstm_dropout=0.1"]
    args = [
        "train", *common, "--features", "vgg16-rgb", "--features", "vgg16-flow", "--head", "deep-fusion",
        *(a for o in options for a in ("-O", o)),
        "--batch-size", "8", "--epochs", "5", "--lr", "0.01", "--threads", "1", "--device", "cpu",
        "--run-id", "df", "--json",
    ]  # fmt: skip
    trained = runner.invoke(app, args)
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["run_id"] == "df" and summary["metrics"]["videos"] == 6
    assert summary["metrics"]["accuracy"] >= 2 / 3

    config = json.loads((ws.dir / "runs" / "df" / "config.json").read_text())
    assert config["train"]["head"] == "deep-fusion" and config["train"]["head_options"]["hidden"] == 8

    evaluated = runner.invoke(app, ["evaluate", *common, "--run", "df", "--json", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    scores = lambda m: {k: v for k, v in m.items() if k not in TIMING_KEYS}
    assert scores(json.loads(evaluated.stdout)) == scores(summary["metrics"])
