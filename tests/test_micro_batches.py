"""Batches cut into micro-batches under a memory budget: the step is still the batch's.

The references are the whole batch run at once (the gradient a micro-batched step
accumulates must equal it), hand-counted bytes (what autograd saves for a ReLU and a
linear layer), and the rule of :mod:`vpipe.train.memory` computed by hand.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import typer
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler
from typer.testing import CliRunner

from tests.fake_cache import D, FEATURES, make_workspace
from vpipe import catalog
from vpipe.cli.train_cmd import register
from vpipe.head_specs import HeadInput
from vpipe.models.heads import create_head
from vpipe.models.heads.registry import Head, HeadBatch, register_head, unregister_head
from vpipe.train import TrainConfig, evaluate, train
from vpipe.train.data import MicroBatches, collate_heads, loader
from vpipe.train.memory import ACTIVATION_FACTOR, RUNTIME_BYTES, plan_micro_batch, saved_activation_bytes
from vpipe.train.trainer import _Step


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- every registered head: the accumulated gradient is the whole batch's ----------------

#: Per head: tiny input shapes, options with every dropout off, and per-video lengths
#: (entries of each role; st-manet reads one window per video, so its training pick is
#: not random). Lengths differ so that micro-batches pad differently from the batch.
TINY = {
    "bilstm-softagg": ({"x": (6,)}, {"hidden": 4, "clusters": 3, "dropout": 0.0}, [5, 3, 7, 4, 6, 2, 5]),
    "deep-fusion": (
        {"rgb": (4, 4, 4), "flow": (4, 4, 4)},
        {"fused": 4, "fc6": 12, "hidden": 5, "attention": 3, "fc6_grid": 2, "fc6_dropout": 0.0, "lstm_dropout": 0.0},
        [4, 6, 5, 7, 4, 3, 6],
    ),
    "st-manet": (
        {"stage2": (4, 8, 2, 3), "stage3": (8, 4, 2, 3), "stage4": (16, 2, 2, 3), "stage5": (32, 2, 2, 3)},
        {"dropout": 0.0},
        [1] * 7,
    ),
    "vcm-sdd": (
        {"rgb": (4, 3, 5), "flow": (4, 3, 5)},
        {"dim": 8, "heads": 2, "frames": 3, "dropout": 0.0},
        [6, 3, 9, 6, 3, 6, 9],
    ),
}


def test_every_registered_head_has_a_tiny_case():
    assert sorted(TINY) == sorted(catalog.HEADS)


def _items(shapes: dict[str, tuple[int, ...]], lengths: list[int], classes: int) -> list:
    g = torch.Generator().manual_seed(1)
    return [
        ({role: torch.rand(n, *shape, generator=g) for role, shape in shapes.items()}, i % classes)
        for i, n in enumerate(lengths)
    ]


def _step_gradients(model: Head, items: list, micro: int) -> list[torch.Tensor]:
    """The gradients one training step (the trainer's ``_Step``) leaves on the parameters."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    step = _Step(
        model,
        optimizer,
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        torch.amp.GradScaler("cpu", enabled=False),
        grad_clip=0.0,
        device=torch.device("cpu"),
        dtype=None,
    )
    batches = DataLoader(
        items, batch_sampler=MicroBatches(SequentialSampler(items), len(items), micro), collate_fn=collate_heads
    )
    torch.manual_seed(0)
    step.epoch(batches)
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("name", sorted(TINY))
def test_micro_batched_step_gives_the_whole_batchs_gradient(name):
    """Batch of 7 in micro-batches of 3, 3 and 1: each loss weighted by its share of the
    batch. Summing the micro-batch means (or averaging them) would weigh the last video
    3× (or 7/3×) too much and fail here."""
    shapes, options, lengths = TINY[name]
    torch.manual_seed(0)
    model = create_head(name, shapes, 3, **options)
    items = _items(shapes, lengths, 3)
    whole = _step_gradients(model, items, micro=len(items))
    cut = _step_gradients(model, items, micro=3)
    assert len(whole) == len(cut) > 0
    assert any(bool(g.abs().max() > 1e-6) for g in whole)
    for a, b in zip(whole, cut):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


# --- the loader: same videos, same batches, cut -------------------------------------------


def test_micro_batches_keep_the_shuffled_order_and_never_cross_a_batch(tmp_path: Path):
    ws = make_workspace(tmp_path)
    from vpipe.train.data import InputReader
    from vpipe.train.identity import run_inputs

    config = TrainConfig(features=(FEATURES,), head_options={"hidden": 4, "clusters": 3})
    with InputReader(ws, run_inputs(config)) as reader:
        videos = sorted({v for v in reader.indexes[0]["video_id"]})[:11]
        labels = {v: i for i, v in enumerate(videos)}
        whole = list(loader(reader, videos, labels, batch_size=8, train=True, seed=3))
        cut_loader = loader(reader, videos, labels, batch_size=8, train=True, seed=3, micro_batch=3)
        cut = list(cut_loader)
    assert cut_loader.batch_sampler.step_sizes == [len(b) for b in whole] == [8, 8, 3]
    assert [len(b) for b in cut] == [3, 3, 2, 3, 3, 2, 3]
    assert torch.cat([b.labels for b in cut]).tolist() == torch.cat([b.labels for b in whole]).tolist()


def test_the_shuffled_loader_draws_what_torchs_shuffled_loader_draws(tmp_path: Path):
    """The order and the random numbers of an epoch are a plain ``DataLoader(shuffle=True,
    generator=...)``'s: the loader's own seed comes from the run's generator, not from the
    global stream that dropout draws from, so cutting batches changed no earlier run."""
    ws = make_workspace(tmp_path)
    from vpipe.train.data import HeadDataset, InputReader, collate_heads
    from vpipe.train.identity import run_inputs

    config = TrainConfig(features=(FEATURES,), head_options={"hidden": 4, "clusters": 3})
    with InputReader(ws, run_inputs(config)) as reader:
        videos = sorted({v for v in reader.indexes[0]["video_id"]})[:11]
        labels = {v: i for i, v in enumerate(videos)}
        torch.manual_seed(5)
        ours = torch.cat([b.labels for b in loader(reader, videos, labels, batch_size=4, train=True, seed=3)])
        after_ours = torch.rand(3)
        items = [(v, view) for v in videos for view in reader.sets[FEATURES].views(v)]
        reference = DataLoader(
            HeadDataset(reader, items, labels),
            batch_size=4,
            shuffle=True,
            generator=torch.Generator().manual_seed(3),
            collate_fn=collate_heads,
        )
        torch.manual_seed(5)
        theirs = torch.cat([b.labels for b in reference])
        after_theirs = torch.rand(3)
    assert ours.tolist() == theirs.tolist()
    assert torch.equal(after_ours, after_theirs)


# --- the rule --------------------------------------------------------------------------


class _ReluMean(Head):
    """x → linear → ReLU → mean over steps; loss: mean square of the result. Autograd
    keeps the linear layer's input x (B, L, D), the ReLU's output (B, L, C) and the
    square's input (B, C), all float32, and the weight (a parameter, not counted)."""

    name = "test-relu-mean"
    options = ()
    batch_coupled = False

    @classmethod
    def input_spec(cls, features, options):
        return [HeadInput("x", tuple(features), "pool")]

    def __init__(self, shapes, num_classes, **options):
        super().__init__()
        self.linear = nn.Linear(shapes["x"][0], num_classes)
        self.num_features = num_classes

    def forward_features(self, batch: HeadBatch) -> torch.Tensor:
        return torch.relu(self.linear(batch.inputs["x"])).mean(1)

    def forward_head(self, embedding: torch.Tensor) -> torch.Tensor:
        return embedding

    def training_loss(self, batch: HeadBatch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self(batch)
        return logits.square().mean(), logits


def _probe(videos: int, steps: int, width: int) -> HeadBatch:
    x = torch.randn(videos, steps, width)
    return HeadBatch({"x": x}, {"x": torch.full((videos,), steps)}, torch.zeros(videos, dtype=torch.long))


def test_saved_activations_are_counted_by_hand_and_draw_no_random_numbers():
    model = _ReluMean({"x": (16,)}, 5)
    probe = _probe(2, 10, 16)
    state = torch.get_rng_state()
    assert saved_activation_bytes(model, probe) == 4 * 2 * (10 * 16 + 10 * 5 + 5)
    assert torch.equal(torch.get_rng_state(), state)


def test_micro_batch_follows_the_documented_rule():
    model = _ReluMean({"x": (16,)}, 5)
    probe = _probe(1, 10, 16)
    parameters = 4 * (16 * 5 + 5)
    fixed = RUNTIME_BYTES + 1000 + 5 * parameters + 4 * 16 * 5
    per_video = round(2 * 4 * 10 * 16 + ACTIVATION_FACTOR * 4 * (10 * 16 + 10 * 5 + 5))
    plan = lambda budget, **kw: plan_micro_batch(  # noqa: E731
        model, probe, batch_size=32, memory_budget=budget, cache_bytes=1000, **kw
    )
    assert plan(fixed + 7 * per_video + per_video // 2).size == 7
    assert plan(fixed + 7 * per_video).size == 7
    assert plan(fixed + 7 * per_video - 1).size == 6
    assert plan(fixed + 100 * per_video).size == 32
    tight = plan(fixed)
    assert tight.size == 1 and "exceeds the budget" in tight.describe()
    assert plan(fixed + 7 * per_video).to_dict() == {
        "size": 7, "batch_size": 32, "rule": "budget", "memory_budget": fixed + 7 * per_video,
        "fixed_bytes": fixed, "per_video_bytes": per_video,
    }  # fmt: skip
    assert plan(1, size=5).size == 5
    assert plan(1, size=50).size == 32
    assert plan(1, size=5, batch_coupled=True).size == 32


# --- training end to end ------------------------------------------------------------------

EXACT = dict(
    features=(FEATURES,),
    head_options={"hidden": 8, "clusters": 4, "dropout": 0.0},
    batch_size=8,
    max_epochs=3,
    patience=3,
    lr=1e-2,
)


def test_a_cut_run_trains_what_the_whole_run_trains_under_the_same_fingerprint(tmp_path: Path):
    ws = make_workspace(tmp_path)
    config = TrainConfig(**EXACT)
    whole = train(ws, config, run_id="whole")
    cut = train(ws, config, run_id="cut", micro_batch=3)
    stored = {r: json.loads((ws.run_dir(r) / "config.json").read_text()) for r in ("whole", "cut")}
    assert stored["whole"]["fingerprint"] == stored["cut"]["fingerprint"]
    assert stored["whole"]["environment"]["micro_batch"]["size"] == 8
    assert stored["cut"]["environment"]["micro_batch"] == {
        "size": 3, "batch_size": 8, "rule": "given", "memory_budget": None, "fixed_bytes": None,
        "per_video_bytes": None,
    }  # fmt: skip
    for column in ("train_loss", "val_loss"):
        torch.testing.assert_close(
            torch.tensor(cut.history[column].to_numpy()), torch.tensor(whole.history[column].to_numpy()), rtol=1e-4, atol=1e-6
        )
    assert evaluate(ws, "cut")["accuracy"] == cut.metrics["accuracy"]


def test_the_budget_sizes_the_micro_batch_from_the_longest_video(tmp_path: Path):
    ws = make_workspace(tmp_path)
    config = TrainConfig(**EXACT)
    head = create_head("bilstm-softagg", {"x": (D,)}, 4, **EXACT["head_options"])
    parameters = sum(p.numel() * 4 for p in head.parameters())
    fixed = RUNTIME_BYTES + 1000 + 5 * parameters + max(p.numel() * 4 for p in head.parameters())
    result = train(ws, config, run_id="budget", cache_bytes=1000, memory_budget=fixed + 1)
    cut = json.loads((result.directory / "config.json").read_text())["environment"]["micro_batch"]
    assert cut["rule"] == "budget" and cut["fixed_bytes"] == fixed and cut["size"] == 1
    # The fake cache's longest training video: 2 clips of 10 steps of D values.
    assert cut["per_video_bytes"] > 2 * 4 * 20 * D


def test_a_batch_coupled_head_runs_whole_batches(tmp_path: Path):
    ws = make_workspace(tmp_path)

    @register_head
    class Coupled(_ReluMean):
        name = "test-coupled"
        batch_coupled = True

    try:
        result = train(ws, TrainConfig(features=(FEATURES,), head="test-coupled", batch_size=8, max_epochs=1), micro_batch=2)
    finally:
        unregister_head("test-coupled")
    cut = json.loads((result.directory / "config.json").read_text())["environment"]["micro_batch"]
    assert cut["size"] == 8 and cut["rule"] == "the head couples the videos of a batch"


def test_cli_takes_a_budget_or_a_micro_batch_and_logs_the_cut(tmp_path: Path):
    ws = make_workspace(tmp_path)
    app = typer.Typer()
    register(app)
    common = ["train", "--dataset", "fake", "--workspace", str(ws.root), "--features", FEATURES, "--batch-size", "8",
              "--epochs", "1", "-O", "hidden=4", "-O", "clusters=3"]  # fmt: skip
    out = CliRunner().invoke(app, [*common, "--micro-batch", "3", "--run-id", "given"])
    assert out.exit_code == 0, out.output
    assert "batches of 8 run as micro-batches of 3, gradients accumulated (given)" in out.output
    out = CliRunner().invoke(app, [*common, "--memory-budget", "512M", "--run-id", "small"])
    assert out.exit_code == 0, out.output
    cut = json.loads((ws.run_dir("small") / "config.json").read_text())["environment"]["micro_batch"]
    assert cut["memory_budget"] == 2**29 and cut["size"] == 1
    out = CliRunner().invoke(app, [*common, "--memory-budget", "0", "--run-id", "zero"])
    assert out.exit_code == 1 and "--memory-budget expects a size like 3G" in out.output
    assert not ws.run_dir("zero").exists()


# --- the allocator ------------------------------------------------------------------------

_HELD_AFTER_FREE = """
import sys
import numpy as np
from vpipe.train.memory import return_large_blocks

def rss():
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmRSS"))

if sys.argv[1] == "fixed":
    assert return_large_blocks()
big = np.ones(4_000_000)  # 32 MB, mapped; freeing it raises glibc's threshold unless fixed
del big
before = rss()
video = np.ones(2_000_000)  # 16 MB, as a decoded video's maps
del video
print(rss() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists() or platform.libc_ver()[0] != "glibc", reason="glibc on Linux")
def test_freed_inputs_go_back_to_the_system():
    # glibc's own defaults: dask sets MALLOC_TRIM_THRESHOLD_ in the environment of its workers and of this process.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    held = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", _HELD_AFTER_FREE, mode], capture_output=True, text=True, check=True, env=env
            ).stdout
        )
        for mode in ("glibc", "fixed")
    }
    assert held["glibc"] > 12e6
    assert held["fixed"] < 2e6
