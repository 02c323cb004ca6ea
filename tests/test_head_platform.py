"""The head platform: a head registered in this file alone trains, evaluates and reports
through the CLI; several feature sets fuse late or early; inputs are checked before
training; streamed reading equals cached reading; whole-dataset stages say in
``status`` what ``run`` would do."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import typer
from torch import Tensor, nn
from typer.testing import CliRunner

from tests.fake_cache import D, FEATURES, make_workspace
from vpipe.cli.train_cmd import register
from vpipe.errors import ConfigError, StageError
from vpipe.models.heads import (
    Head,
    HeadBatch,
    HeadOption,
    TrainingDefaults,
    create_head,
    describe_head,
    register_head,
)
from vpipe.models.heads.fusion import LateFusion
from vpipe.models.heads.registry import HeadInput, unregister_head
from vpipe.pipeline.executor import InProcessExecutor
from vpipe.pipeline.runner import run_stage, stage_status
from vpipe.stages.dataset_steps import ReportStage, TrainStage
from vpipe.store import ShardWriter, shard_name, write_index
from vpipe.train import TrainConfig, evaluate, runs, train
from vpipe.train.data import InputReader, assemble, loader
from vpipe.train.metrics import TIMING_KEYS

FLOW = "li3d-flow"
QUICK = dict(batch_size=8, max_epochs=4, patience=4, lr=1e-2)
SMALL = dict(hidden=8, clusters=4, dropout=0.1)


class MeanMLP(Head):
    """Mean of the steps, one hidden layer: a head a new contributor might add."""

    name = "test-mean-mlp"
    summary = "mean over steps, then an MLP"
    options = (
        HeadOption("layer", "pool", "Cached layer."),
        HeadOption("width", 16, "Hidden units.", minimum=1),
    )
    example_shapes = {"x": (1024,)}
    training = TrainingDefaults(lr=0.02, max_epochs=3, schedule="two-phase", reason="a quick toy")

    def __init__(self, shapes: dict[str, tuple[int, ...]], num_classes: int, *, layer: str, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(shapes["x"][0], width), nn.ReLU())
        self.classifier = nn.Linear(width, num_classes)
        self.num_features = width

    def forward_features(self, batch: HeadBatch) -> Tensor:
        mask = batch.mask("x").unsqueeze(-1).float()
        mean = (batch.inputs["x"] * mask).sum(1) / mask.sum(1)
        return self.body(mean)

    def forward_head(self, embedding: Tensor) -> Tensor:
        return self.classifier(embedding)


@pytest.fixture(autouse=True)
def _one_thread_and_toy_head():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    register_head(MeanMLP)
    yield
    unregister_head(MeanMLP.name)
    torch.set_num_threads(before)


@pytest.fixture
def ws(tmp_path: Path):
    return make_workspace(tmp_path, features=(FEATURES, FLOW))


def _scores(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def test_a_head_registered_in_a_test_file_trains_evaluates_and_reports_through_the_cli(ws):
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    common = ["--dataset", "fake", "--workspace", str(ws.root)]
    listed = runner.invoke(app, ["heads", "--json"])
    info = {row["name"]: row for row in json.loads(listed.stdout)}
    assert info["test-mean-mlp"]["parameters"] == 1024 * 16 + 16 + 16 * 101 + 101
    assert info["test-mean-mlp"]["options"][1] == {"name": "width", "default": 16, "choices": None, "help": "Hidden units."}

    trained = runner.invoke(
        app, ["train", *common, "--head", "test-mean-mlp", "-O", "width=12", "--epochs", "3", "--batch-size", "8", "--json"]
    )
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["run_id"].startswith("li3d-rgb-test-mean-mlp-") and summary["run_id"].endswith("-s0")
    config = json.loads((Path(summary["directory"]) / "config.json").read_text())
    assert config["train"]["head_options"] == {"layer": "pool", "width": 12}

    evaluated = runner.invoke(app, ["evaluate", *common, "--run", summary["run_id"], "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert _scores(json.loads(evaluated.stdout)) == _scores(summary["metrics"])

    reported = runner.invoke(app, ["report", *common, "--no-tsne", "--json"])
    assert reported.exit_code == 0, reported.output
    row = json.loads(reported.stdout)["runs"][0]
    assert (row["head"], row["inputs"], row["settings"]) == ("test-mean-mlp", "li3d-rgb", "width=12")

    bad = runner.invoke(app, ["train", *common, "--head", "test-mean-mlp", "-O", "width=wide"])
    assert bad.exit_code == 1 and "width='wide' is not a valid int" in bad.stderr


def test_a_heads_training_defaults_apply_when_no_flag_names_them(ws):
    app = typer.Typer()
    register(app)
    runner = CliRunner()
    listed = {row["name"]: row for row in json.loads(runner.invoke(app, ["heads", "--json"]).stdout)}
    assert listed["test-mean-mlp"]["training"] == {
        "lr": 0.02, "max_epochs": 3, "schedule": "two-phase", "reason": "a quick toy",
    }  # fmt: skip
    assert "training: --lr 0.02 --epochs 3 --schedule two-phase" in runner.invoke(app, ["heads"]).stdout

    common = ["train", "--dataset", "fake", "--workspace", str(ws.root), "--head", "test-mean-mlp", "--json"]
    trained = runner.invoke(app, common)
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["epochs"] <= 3 and not summary["run_id"].endswith("two-phase-s0")
    config = json.loads((Path(summary["directory"]) / "config.json").read_text())["train"]
    assert (config["lr"], config["max_epochs"], config["schedule"]) == (0.02, 3, "two-phase")

    flagged = runner.invoke(app, [*common, "--lr", "0.005", "--epochs", "2", "--schedule", "warmup-cosine"])
    assert flagged.exit_code == 0, flagged.output
    config = json.loads((Path(json.loads(flagged.stdout)["directory"]) / "config.json").read_text())["train"]
    assert (config["lr"], config["max_epochs"], config["schedule"]) == (0.005, 2, "warmup-cosine")


def test_naming_a_heads_training_default_equals_leaving_it_out():
    implicit = TrainConfig(head="st-manet", features=("r3d50-rgb",))
    explicit = TrainConfig(head="st-manet", features=("r3d50-rgb",), lr=1e-4, max_epochs=90, schedule="warmup-cosine")
    assert implicit == explicit and implicit.to_dict() == explicit.to_dict()
    assert (implicit.lr, implicit.max_epochs) == (1e-4, 90)
    deep = TrainConfig(head="deep-fusion", features=("vgg16-rgb", "vgg16-flow"))
    assert (deep.lr, deep.schedule) == (1e-5, "two-phase") and not deep.default_run_id().endswith("two-phase-s0")
    assert TrainConfig(head="st-manet", features=("r3d50-rgb",), lr=1e-3).lr == 1e-3


def test_two_heads_with_equal_settings_get_different_run_ids():
    toy = TrainConfig(head="test-mean-mlp")
    bilstm = TrainConfig()
    assert toy.default_run_id() != bilstm.default_run_id()
    assert bilstm.default_run_id() == "li3d-rgb-bilstm-mean-k128-s0"


def test_late_fusion_averages_the_probabilities_of_one_head_per_stream(ws):
    config = TrainConfig(features=(FEATURES, FLOW), head="bilstm-softagg", head_options=SMALL, **QUICK)
    result = train(ws, config)
    assert result.run_id == "li3d-rgb+li3d-flow-late-bilstm-mean-k4-s0"
    stored = json.loads((result.directory / "config.json").read_text())
    assert [spec["role"] for spec in stored["inputs"]] == ["0/x", "1/x"]
    assert stored["model"]["shapes"] == {"0/x": [D], "1/x": [D]}

    from vpipe.train.evaluation import load

    loaded = load(ws, runs.load_run(ws, result.run_id), device="cpu")
    try:
        assert isinstance(loaded.model, LateFusion) and len(loaded.model.heads) == 2
        batch = next(iter(loaded.test_loader()))
        with torch.no_grad():
            fused = loaded.model(batch)
            parts = [h(batch.select(f"{i}/")) for i, h in enumerate(loaded.model.heads)]
        mean_prob = (torch.softmax(parts[0], 1) + torch.softmax(parts[1], 1)) / 2
        torch.testing.assert_close(torch.exp(fused), mean_prob, rtol=1e-5, atol=1e-6)
    finally:
        loaded.close()
    assert _scores(evaluate(ws, result.run_id)) == _scores(result.metrics)


def test_early_fusion_concatenates_the_streams_step_by_step(ws):
    config = TrainConfig(features=(FEATURES, FLOW), fusion="early", head_options=SMALL, **QUICK)
    result = train(ws, config)
    assert result.run_id == "li3d-rgb+li3d-flow-early-bilstm-mean-k4-s0"
    stored = json.loads((result.directory / "config.json").read_text())
    assert stored["model"]["shapes"] == {"x": [2 * D]}
    spec = HeadInput("x", (FEATURES, FLOW), "pool")
    with InputReader(ws, [spec]) as reader:
        video = stored["data"]["test"][0]
        got = reader.read(video, 0)["x"]
        rgb = reader.sets[FEATURES].sequence(video)
        flow = reader.sets[FLOW].sequence(video)
    np.testing.assert_array_equal(got, np.concatenate([rgb, flow], axis=1))


def test_assemble_keeps_clips_or_joins_steps():
    stack = np.arange(2 * 3 * 4, dtype=np.float16).reshape(2, 3, 4)
    steps = assemble(HeadInput("x", ("a",), "pool"), [stack])
    clips = assemble(HeadInput("x", ("a",), "pool", layout="clips"), [stack])
    assert steps.shape == (6, 4) and np.array_equal(steps[3], stack[1, 0])
    assert clips.shape == (2, 3, 4)
    with pytest.raises(StageError, match="disagree"):
        assemble(HeadInput("x", ("a", "b"), "pool"), [stack, stack[:1]])


def test_a_video_missing_from_one_stream_is_named_before_training(ws):
    index_path = ws.features_dir(FLOW) / "index.parquet"
    index = pd.read_parquet(index_path)
    dropped = "Vanish_03"
    index[index["video_id"] != dropped].to_parquet(index_path)
    config = TrainConfig(features=(FEATURES, FLOW), head_options=SMALL, **QUICK)
    result = train(ws, config)
    stored = json.loads((result.directory / "config.json").read_text())
    assert dropped not in stored["data"]["labels"]
    assert stored["data"]["videos_without_features"] == 1

    spec = [HeadInput("x", (FEATURES,), "pool"), HeadInput("y", (FLOW,), "pool")]
    with InputReader(ws, spec) as reader, pytest.raises(StageError, match=f"video '{dropped}' view 0 has no features in 'li3d-flow'"):
        loader(reader, [dropped], None, batch_size=2, train=False)


def test_streams_from_different_plans_are_refused(ws):
    with ShardWriter(ws.features_dir("other-rgb") / shard_name("extract", "x"), attrs={"plan": "dense"}) as writer:
        writer.add("Appear_00", 0, 0, {"pool": np.zeros((3, D))})
    write_index(ws.features_dir("other-rgb"), writer.rows)
    with ShardWriter(ws.features_dir("one-rgb") / shard_name("extract", "x"), attrs={"plan": "li3d"}) as writer:
        writer.add("Appear_00", 0, 0, {"pool": np.zeros((3, D))})
    write_index(ws.features_dir("one-rgb"), writer.rows)
    with pytest.raises(StageError, match="one plan"):
        InputReader(ws, [HeadInput("x", ("one-rgb",), "pool"), HeadInput("y", ("other-rgb",), "pool")])


def test_unknown_layer_is_a_config_error(ws):
    with pytest.raises(ConfigError, match="no layer 'grid'"):
        train(ws, TrainConfig(head_options={**SMALL, "layer": "grid"}, **QUICK))


def test_streaming_from_shards_equals_reading_through_the_cache(ws):
    spec = [HeadInput("x", (FEATURES,), "pool")]
    with InputReader(ws, spec) as cached, InputReader(ws, spec, cache_bytes=0) as streamed:
        ids = ["Appear_00", "QThenP_05", "PThenQ_09"]
        for a, b in zip(loader(cached, ids, None, batch_size=2, train=False), loader(streamed, ids, None, batch_size=2, train=False)):
            torch.testing.assert_close(a.inputs["x"], b.inputs["x"], rtol=0, atol=0)
        assert streamed._cached == 0 and cached._cached > 0


def run_file_reads(work: Callable[[], object]) -> dict[tuple[Path, str], int]:
    """How often ``work`` reads each run's ``config.json`` and ``metrics.json``."""
    reads: dict[tuple[Path, str], int] = {}
    read_text = Path.read_text

    def counted(path: Path, *args: object, **kwargs: object) -> str:
        if path.name in ("config.json", "metrics.json") and path.parent.parent.name == "runs":
            reads[path.parent, path.name] = reads.get((path.parent, path.name), 0) + 1
        return read_text(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "read_text", counted)
        work()
    return reads


def test_status_says_what_run_would_do(ws):
    configs = [TrainConfig(head_options=SMALL, **QUICK), TrainConfig(features=FLOW, head_options=SMALL, **QUICK)]
    trains = [TrainStage(ws, c, inputs=()) for c in configs]
    stages = [*trains, ReportStage(ws, trains, tsne=False)]

    def status() -> list[int]:
        return [stage_status(stage).done for stage in stages]

    def run() -> list[int]:
        return [run_stage(stage, InProcessExecutor(), progress=False).computed for stage in stages]

    assert status()[:2] == [0, 0]
    assert not stage_status(stages[2]).ready
    assert run() == [1, 1, 1]
    assert status() == [1, 1, 1]
    assert run() == [0, 0, 0]
    assert run_file_reads(stages[2].work) == {
        (run, name): 1 for run in ws.runs_dir.iterdir() for name in ("config.json", "metrics.json")
    }, "evaluating and reporting read each run once and hand the record on"

    # A re-extracted flow set changes the flow run's fingerprint, hence the report's.
    index_path = ws.features_dir(FLOW) / "index.parquet"
    index = pd.read_parquet(index_path)
    index.iloc[::-1].reset_index(drop=True).to_parquet(index_path)
    assert status()[:2] == [1, 0]
    assert run() == [0, 1, 1]
    assert status()[2] == 1


def test_describe_head_counts_parameters_at_the_example_size():
    info = describe_head("bilstm-softagg")
    model = create_head("bilstm-softagg", {"x": (1024,)}, 101)
    assert info.parameters == sum(p.numel() for p in model.parameters())
    assert info.hooks == ["prepare", "external_files"]
    assert info.inputs == [{"role": "x", "features": ["<features1>"], "layer": "pool", "layout": "steps"}]
