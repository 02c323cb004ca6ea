"""The vcm-sdd head against loop-and-numpy references of the paper's equations."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

from vpipe.cli.train_cmd import register
from vpipe.errors import ConfigError
from vpipe.models.heads import HeadBatch, create_head, head_class
from vpipe.models.heads.vcmsdd import CrossAttention, SpatioTemporalConsistency, geometry
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.store import ShardWriter, shard_name, write_index
from vpipe.train.metrics import TIMING_KEYS

torch.set_num_threads(1)
TOL = 1e-5


# --- numpy references -------------------------------------------------------------------


def np_geom(dt: int, dx: int, dy: int, frames: int) -> np.ndarray:
    """Eq. 6 with unit cells: (1/ln(|Δx|+e), 1/ln(|Δy|+e), 1/ln(|Δt|/T+e))."""
    return np.array([1 / np.log(abs(dx) + np.e), 1 / np.log(abs(dy) + np.e), 1 / np.log(abs(dt) / frames + np.e)])


def np_neighbours(k: int, h: int, w: int, t: int, y: int, x: int) -> list[tuple[int, int, int]]:
    """Every cell within 2 frames, rows and columns of (t, y, x), found by scanning them all."""
    return [
        (tj, yj, xj)
        for tj, yj, xj in itertools.product(range(k), range(h), range(w))
        if abs(tj - t) <= 2 and abs(yj - y) <= 2 and abs(xj - x) <= 2
    ]


def np_stc(x: np.ndarray, w_p: np.ndarray, w_q: np.ndarray) -> np.ndarray:
    """Eq. 7-10 node by node: x (k, C, h, w) -> (k, C, h, w)."""
    k, _, h, w = x.shape
    out = np.zeros_like(x, dtype=np.float64)
    for t, y, xi in itertools.product(range(k), range(h), range(w)):
        nodes = np_neighbours(k, h, w, t, y, xi)
        sims = np.array(
            [(np.maximum(np_geom(tj - t, xj - xi, yj - y, k) @ w_p, 0) @ w_q)[0] for tj, yj, xj in nodes]
        )
        s = np.exp(sims - sims.max())
        s /= s.sum()
        out[t, :, y, xi] = sum(sj * x[tj, :, yj, xj] for sj, (tj, yj, xj) in zip(s, nodes))
    return out


def np_cross_attention(query: np.ndarray, context: np.ndarray, p: dict[str, np.ndarray], heads: int) -> np.ndarray:
    """Eq. 11 per head: softmax(Q Kᵀ/√d) V, heads concatenated, output projection. (Lq, C), (Lk, C)."""
    q = query @ p["q.weight"].T + p["q.bias"]
    k = context @ p["k.weight"].T + p["k.bias"]
    v = context @ p["v.weight"].T + p["v.bias"]
    d = q.shape[1] // heads
    outs = []
    for i in range(heads):
        cols = slice(i * d, (i + 1) * d)
        logits = q[:, cols] @ k[:, cols].T / math.sqrt(d)
        a = np.exp(logits - logits.max(axis=1, keepdims=True))
        a /= a.sum(axis=1, keepdims=True)
        outs.append(a @ v[:, cols])
    return np.concatenate(outs, axis=1) @ p["out.weight"].T + p["out.bias"]


def params(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: p.detach().double().numpy() for name, p in module.named_parameters()}


def np_head_embedding(head, rgb: np.ndarray, flow: np.ndarray, k: int) -> np.ndarray:
    """One video (frames, C, h, w) per stream: eq. 10-14 segment by segment, then averaged."""
    mean, std = head.mean.double().numpy(), head.std.double().numpy()
    rows = []
    for s in range(len(rgb) // k):
        r = (rgb[s * k : (s + 1) * k] - mean[0][:, None, None]) / std[0][:, None, None]
        f = (flow[s * k : (s + 1) * k] - mean[1][:, None, None]) / std[1][:, None, None]
        if head.stc_rgb is not None:
            pr, pf = params(head.stc_rgb), params(head.stc_flow)
            r, f = np_stc(r, pr["w_p"], pr["w_q"]), np_stc(f, pf["w_p"], pf["w_q"])
        rt = r.transpose(0, 2, 3, 1).reshape(-1, r.shape[1])
        ft = f.transpose(0, 2, 3, 1).reshape(-1, f.shape[1])
        if head.rgb_to_flow is not None:
            heads = head.rgb_to_flow.heads
            rt, ft = (
                np_cross_attention(rt, ft, params(head.rgb_to_flow), heads),
                np_cross_attention(ft, rt, params(head.flow_to_rgb), heads),
            )
        rows.append(np.concatenate([rt.mean(axis=0), ft.mean(axis=0)]))
    return np.mean(rows, axis=0)


# --- helpers ----------------------------------------------------------------------------


def small_head(**options) -> torch.nn.Module:
    options = {"dim": 8, "heads": 2, "frames": 3, "dropout": 0.0, **options}
    torch.manual_seed(0)
    head = create_head("vcm-sdd", {"rgb": (4, 3, 5), "flow": (4, 3, 5)}, 3, **options)
    with torch.no_grad():
        head.mean.normal_()
        head.std.uniform_(0.5, 2.0)
    return head.eval()


def batch_of(rgb: list[np.ndarray], flow: list[np.ndarray]) -> HeadBatch:
    """Zero-padded batch of videos given as (frames, C, h, w) arrays."""

    def pad(videos):
        length = max(len(v) for v in videos)
        out = np.zeros((len(videos), length, *videos[0].shape[1:]), dtype=np.float32)
        for i, v in enumerate(videos):
            out[i, : len(v)] = v
        return torch.from_numpy(out), torch.tensor([len(v) for v in videos])

    (xr, nr), (xf, nf) = pad(rgb), pad(flow)
    return HeadBatch({"rgb": xr, "flow": xf}, {"rgb": nr, "flow": nf}, torch.zeros(len(rgb), dtype=torch.int64))


# --- STC --------------------------------------------------------------------------------


def test_geometry_is_eq6_with_euler_offset():
    offsets = torch.tensor([[0, 0, 0], [1, -2, 0], [-2, 1, 2]])
    got = geometry(offsets, frames=6).numpy()
    want = np.stack([np_geom(*o, frames=6) for o in offsets.tolist()])
    np.testing.assert_allclose(got, want, atol=TOL)
    # Rounded once from float64, so the zero offset is exactly 1 and nothing exceeds it on
    # any CPU (a float32 log of float32 e gives 1.0000001 on some).
    assert np.all(got[0] == 1.0) and np.all(got[1:] <= 1.0) and got[1, 0] < got[2, 0]
    assert got.dtype == np.float32


def test_stc_matches_node_by_node_loops():
    torch.manual_seed(1)
    stc = SpatioTemporalConsistency(relation_dim=5)
    with torch.no_grad():
        stc.w_p.normal_()
        stc.w_q.normal_()
    x = np.random.default_rng(0).normal(size=(2, 4, 3, 5, 6)).astype(np.float32)
    got = stc(torch.from_numpy(x).permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3).detach().numpy()
    p = params(stc)
    for n in range(2):
        np.testing.assert_allclose(got[n], np_stc(x[n].astype(np.float64), p["w_p"], p["w_q"]), atol=TOL)


def test_stc_neighbourhood_is_exactly_the_cells_within_two_on_each_axis():
    k, h, w = 6, 5, 7
    cells = list(itertools.product(range(k), range(h), range(w)))
    onehot = np.zeros((1, k, len(cells), h, w), dtype=np.float32)
    for c, (t, y, x) in enumerate(cells):
        onehot[0, t, c, y, x] = 1.0
    weights = SpatioTemporalConsistency()(torch.from_numpy(onehot).permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)[0]
    weights = weights.detach().numpy()
    for t, y, x in cells:
        s = weights[t, :, y, x]
        support = {cells[c] for c in np.flatnonzero(s > 1e-12)}
        assert support == set(np_neighbours(k, h, w, t, y, x))
        assert s.sum() == pytest.approx(1.0, abs=TOL)
    corner, centre = weights[0, :, 0, 0], weights[3, :, 2, 3]
    assert (corner > 1e-12).sum() == 27 and (centre > 1e-12).sum() == 125


# --- MFF --------------------------------------------------------------------------------


def test_cross_attention_matches_numpy_formula():
    torch.manual_seed(2)
    attention = CrossAttention(channels=6, dim=8, heads=4)
    rng = np.random.default_rng(1)
    query, context = rng.normal(size=(2, 5, 6)), rng.normal(size=(2, 7, 6))
    got = attention(torch.tensor(query, dtype=torch.float32), torch.tensor(context, dtype=torch.float32))
    for n in range(2):
        want = np_cross_attention(query[n], context[n], params(attention), heads=4)
        np.testing.assert_allclose(got[n].detach().numpy(), want, atol=TOL)


# --- the head ---------------------------------------------------------------------------


@pytest.mark.parametrize("stc,mff", [(False, False), (True, False), (False, True), (True, True)])
def test_head_embedding_matches_reference_and_ignores_padded_segments(stc, mff):
    head = small_head(stc=stc, mff=mff)
    rng = np.random.default_rng(3)
    rgb = [rng.normal(size=(n, 4, 3, 5)).astype(np.float32) for n in (9, 3)]
    flow = [rng.normal(size=(n, 4, 3, 5)).astype(np.float32) for n in (9, 3)]
    batch = batch_of(rgb, flow)
    got = head.forward_features(batch).detach().numpy()
    assert got.shape == (2, head.num_features)
    for i in range(2):
        np.testing.assert_allclose(got[i], np_head_embedding(head, rgb[i], flow[i], 3), atol=TOL)
    batch.inputs["rgb"][1, 3:] = 1e4
    batch.inputs["flow"][1, 3:] = -1e4
    np.testing.assert_allclose(head.forward_features(batch).detach().numpy(), got, atol=TOL)


def test_gradients_reach_every_trainable_parameter():
    head = small_head().train()
    rng = np.random.default_rng(4)
    batch = batch_of(
        [rng.normal(size=(n, 4, 3, 5)).astype(np.float32) for n in (6, 3)],
        [rng.normal(size=(n, 4, 3, 5)).astype(np.float32) for n in (6, 3)],
    )
    loss, _ = head.training_loss(batch)
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_options_and_inputs_are_checked():
    with pytest.raises(ConfigError, match="multiple of heads"):
        create_head("vcm-sdd", {"rgb": (4, 3, 5), "flow": (4, 3, 5)}, 3, dim=10, heads=4)
    with pytest.raises(ConfigError, match="same backbone"):
        create_head("vcm-sdd", {"rgb": (4, 3, 5), "flow": (8, 3, 5)}, 3)
    with pytest.raises(ConfigError, match="rgb and a flow"):
        head_class("vcm-sdd").input_spec(("resnet50-rgb",), {"layer": "grid"})
    head = small_head()
    rng = np.random.default_rng(5)
    frames = [rng.normal(size=(4, 4, 3, 5)).astype(np.float32)]
    with pytest.raises(ConfigError, match="frames=3"):
        head(batch_of(frames, frames))


def test_tag_names_the_ablation_row():
    cls = head_class("vcm-sdd")
    assert cls.tag(cls.validate_options({})) == "vcm-sdd-stc-mff"
    assert cls.tag(cls.validate_options({"stc": "false"})) == "vcm-sdd-nostc-mff"
    assert cls.tag(cls.validate_options({"mff": False, "frames": 2})).startswith("vcm-sdd-stc-nomff-")


# --- end to end from the CLI ------------------------------------------------------------

CLASSES = ["Left", "Right", "Up"]


def grid_workspace(root) -> DatasetWorkspace:
    """A tiny rgb + flow grid cache: 3 classes × 6 videos of 2-3 segments × 2 frames of
    (6, 3, 3) cells; the class sits in the flow grid's channel pattern and in the rgb
    grid's mean, under noise."""
    rng = np.random.default_rng(0)
    ws = DatasetWorkspace(root, "fake")
    patterns = rng.normal(size=(len(CLASSES), 6, 1, 1))
    manifest = []
    rows = {"resnet50-rgb": [], "resnet50-flow": []}
    for label, name in enumerate(CLASSES):
        for i in range(6):
            video_id = f"{name}_{i}"
            frames = 2 * int(rng.integers(2, 4))
            for features, signal in (("resnet50-rgb", 0.8 * label), ("resnet50-flow", patterns[label])):
                directory = ws.features_dir(features)
                grid = signal + rng.normal(scale=0.5, size=(frames, 6, 3, 3))
                with ShardWriter(directory / shard_name("extract", video_id), attrs={"plan": "tsn"}) as writer:
                    writer.add(video_id, 0, 0, {"grid": grid})
                rows[features] += writer.rows
            split = "test" if i >= 4 else "train"
            manifest.append({"video_id": video_id, "label": label, "label_name": name, "split": split, "status": "ok"})
    for features, index in rows.items():
        write_index(ws.features_dir(features), index)
    pd.DataFrame(manifest).to_parquet(ws.manifest_path)
    return ws


@pytest.mark.slow
def test_head_trains_from_the_cli_and_evaluate_reproduces_its_metrics(tmp_path):
    ws = grid_workspace(tmp_path)
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    common = ["--dataset", "fake", "--workspace", str(ws.root)]
    args = ["--features", "resnet50-rgb", "--features", "resnet50-flow", "--head", "vcm-sdd"]
    args += ["-O", "frames=2", "-O", "dim=8", "-O", "heads=2", "-O", "dropout=0.1"]
    args += ["--epochs", "8", "--batch-size", "4", "--lr", "0.01", "--threads", "1", "--run-id", "vcm", "--json"]
    trained = runner.invoke(app, ["train", *common, *args])
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["metrics"]["accuracy"] >= 0.8
    evaluated = runner.invoke(app, ["evaluate", *common, "--run", "vcm", "--json", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    again = json.loads(evaluated.stdout)
    assert {k: v for k, v in again.items() if k not in TIMING_KEYS} == {
        k: v for k, v in summary["metrics"].items() if k not in TIMING_KEYS
    }
