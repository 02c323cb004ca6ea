"""Training heads on a fake feature cache: artifacts, accuracy, determinism, errors.

The fake dataset has 4 classes × 10 videos (7 train, 3 test) of 1–2 clips with τ = 6..10
steps of D = 32 features. Classes 0 and 1 differ in what their steps look like; classes
2 and 3 are made of the same two kinds of step in opposite temporal order (P then Q vs
Q then P), so any order-less pooling of the raw steps is at chance on them and only a
temporal model separates all four. Train videos have a second, noisier cached view.
"""

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
from vpipe.encode import Codebook, save_codebook
from vpipe.errors import ConfigError, StageError
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.store import FeatureSet, ShardWriter, shard_name, write_index
from vpipe.train import TrainConfig, evaluate, existing_run, pipeline_config, train, train_for_pipeline
from vpipe.train.codebook import init_aggregation
from vpipe.train.data import carve_validation
from vpipe.train.metrics import TIMING_KEYS
from vpipe.train.scoring import build_head

D = 32
FEATURES = "li3d-rgb"
CLASS_NAMES = ["Appear", "Vanish", "PThenQ", "QThenP"]
#: Small and quick, still a BiLSTM with the concatenated soft encodings.
FAST = dict(hidden=16, clusters=4, batch_size=8, max_epochs=25, patience=25, lr=1e-2, dropout=0.1)


@pytest.fixture(autouse=True)
def _few_threads():
    """The test machine's cores are shared; one torch thread is fastest for these sizes (two contend)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _steps(label: int, tau: int, modes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One video's sequence of ``tau`` steps for ``label`` (see the module docstring)."""
    noise = rng.normal(scale=0.6, size=(tau, D))
    if label < 2:
        return modes[label] + noise
    half = tau // 2
    first, second = (modes[2], modes[3]) if label == 2 else (modes[3], modes[2])
    return np.concatenate([np.repeat(first[None], half, 0), np.repeat(second[None], tau - half, 0)]) + noise


def make_workspace(root: Path, *, seed: int = 0, classes: int = 4, videos: int = 10, test: int = 3) -> DatasetWorkspace:
    rng = np.random.default_rng(seed)
    modes = rng.normal(scale=2.0, size=(4, D))
    ws = DatasetWorkspace(root, "fake")
    directory = ws.features_dir(FEATURES)
    rows, manifest = [], []
    for label in range(classes):
        for i in range(videos):
            video_id = f"{CLASS_NAMES[label]}_{i:02d}"
            split = "test" if i >= videos - test else "train"
            tau, clips = int(rng.integers(6, 11)), int(rng.integers(1, 3))
            views = 2 if split == "train" else 1
            with ShardWriter(directory / shard_name("extract", video_id), attrs={"backbone": "fake"}) as writer:
                for view in range(views):
                    jitter = rng.normal(scale=0.3 * view, size=(tau * clips, D))
                    sequence = _steps(label, tau * clips, modes, rng) + jitter
                    for clip in range(clips):
                        writer.add(video_id, clip, view, {"pool": sequence[clip * tau : (clip + 1) * tau]})
            rows += writer.rows
            manifest.append(
                {"video_id": video_id, "label": label, "label_name": CLASS_NAMES[label], "split": split, "status": "ok"}
            )
    write_index(directory, rows)
    pd.DataFrame(manifest).to_parquet(ws.manifest_path)
    return ws


@pytest.fixture
def ws(tmp_path: Path) -> DatasetWorkspace:
    return make_workspace(tmp_path)


def _history_without_time(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "history.csv").drop(columns="seconds")


def _scores(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


# --- training ---------------------------------------------------------------------------


def test_bilstm_learns_temporal_order_and_writes_every_artifact(ws):
    result = train(ws, TrainConfig(features=FEATURES, temporal="bilstm", aggregation="concat", **FAST))
    assert result.run_id == "li3d-rgb-bilstm-concat-k4-s0"
    assert result.directory == ws.dir / "runs" / result.run_id
    assert result.metrics["accuracy"] >= 0.9

    config = json.loads((result.directory / "config.json").read_text())
    assert config["train"] == TrainConfig(features=FEATURES, **FAST).to_dict()
    assert config["model"] == {"head": "bilstm-softagg", "input_dim": D, "num_classes": 4}
    assert config["features"]["provenance"] == {"backbone": "fake"} and len(config["features"]["index_sha256"]) == 64
    assert config["data"]["class_names"] == CLASS_NAMES
    assert len(config["data"]["test"]) == 12 and len(config["data"]["train"]) + len(config["data"]["val"]) == 28
    assert config["codebook"]["source"].startswith("k-means on untrained bilstm outputs")

    history = pd.read_csv(result.directory / "history.csv")
    assert list(history.columns) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    assert history["epoch"].tolist() == list(range(1, len(history) + 1))
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]

    metrics = json.loads((result.directory / "metrics.json").read_text())
    assert metrics == result.metrics
    assert metrics["videos"] == 12 and metrics["parameters"] > 0 and metrics["test_ms_per_video"] > 0
    assert [row["class"] for row in metrics["per_class"]] == CLASS_NAMES
    assert np.asarray(metrics["confusion"]).sum() == 12
    assert {"macro_precision", "macro_recall", "top5", "macro_f1"} <= set(metrics)

    checkpoint = torch.load(result.directory / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == result.best_epoch
    assert checkpoint["config"]["run_id"] == result.run_id


def test_order_less_average_cannot_separate_reversed_classes(ws):
    """The fake data's premise: the plain average of raw steps is blind to order."""
    result = train(ws, TrainConfig(features=FEATURES, temporal="none", aggregation="avg", **FAST))
    recall = [row["recall"] for row in result.metrics["per_class"]]
    assert recall[0] == recall[1] == 1.0
    assert result.metrics["accuracy"] < 0.9


def test_same_seed_gives_identical_history_and_metrics(ws):
    config = TrainConfig(features=FEATURES, **{**FAST, "max_epochs": 6})
    first = train(ws, config)
    second = train(ws, config)
    assert second.run_id == f"{first.run_id}-2"
    pd.testing.assert_frame_equal(_history_without_time(first.directory), _history_without_time(second.directory))
    assert _scores(first.metrics) == _scores(second.metrics)
    other_seed = train(ws, TrainConfig(features=FEATURES, **{**FAST, "max_epochs": 6, "seed": 1}))
    assert not _history_without_time(other_seed.directory).equals(_history_without_time(first.directory))


def test_evaluate_reproduces_metrics_json(ws):
    config = TrainConfig(features=FEATURES, temporal="lstm", aggregation="softvlad", **{**FAST, "max_epochs": 6})
    result = train(ws, config)
    metrics = evaluate(ws, result.run_id, device="cpu")
    stored = json.loads((result.directory / "metrics.json").read_text())
    assert _scores(metrics) == _scores(stored)
    assert json.loads((result.directory / "evaluation.json").read_text()) == metrics


def test_early_stopping_stops_after_patience_epochs_without_improvement(ws):
    """With lr 0 nothing improves after epoch 1, so patience 2 ends the run at epoch 3."""
    result = train(ws, TrainConfig(features=FEATURES, **{**FAST, "lr": 0.0, "patience": 2, "max_epochs": 20}))
    assert len(result.history) == 3
    assert result.stopped_early and result.best_epoch == 1
    assert torch.load(result.directory / "checkpoint.pt", weights_only=True)["epoch"] == 1


def test_reuse_returns_the_finished_identical_run(ws):
    config = TrainConfig(features=FEATURES, **{**FAST, "max_epochs": 2})
    first = train(ws, config, reuse=True)
    again = train(ws, config, reuse=True)
    assert again.reused and again.run_id == first.run_id and again.metrics == first.metrics
    changed = train(ws, TrainConfig(features=FEATURES, **{**FAST, "max_epochs": 2, "hidden": 8}), reuse=True)
    assert not changed.reused and changed.run_id == f"{first.run_id}-2"


def test_pipeline_entry_trains_once_then_reuses(ws):
    assert existing_run(ws, pipeline_config(FEATURES, max_epochs=2)) is None
    first = train_for_pipeline(ws, FEATURES, max_epochs=2)
    assert not first.reused and first.run_id == "li3d-rgb-bilstm-concat-k16-s0"
    assert existing_run(ws, pipeline_config(FEATURES, max_epochs=2)).run_id == first.run_id
    again = train_for_pipeline(ws, FEATURES, max_epochs=2)
    assert again.reused and again.run_id == first.run_id


def test_explicit_run_id_is_used_and_never_overwritten(ws):
    config = TrainConfig(features=FEATURES, **{**FAST, "max_epochs": 1})
    assert train(ws, config, run_id="mine").directory == ws.dir / "runs" / "mine"
    with pytest.raises(ConfigError, match="already exists"):
        train(ws, config, run_id="mine")
    with pytest.raises(ConfigError, match="invalid run id"):
        train(ws, config, run_id="../elsewhere")


# --- codebook initialisation --------------------------------------------------------------


def _save_codebook(path: Path, centroids: np.ndarray) -> None:
    k, d = centroids.shape
    save_codebook(
        path,
        Codebook(centroids, np.full(k, 1 / k), centroids, np.ones((k, d)), provenance={"fingerprint": "test"}),
    )


def test_temporal_none_starts_from_the_workspace_codebook(ws):
    centroids = np.random.default_rng(0).normal(scale=2.0, size=(4, D)).astype(np.float32)
    _save_codebook(ws.dir / "codebooks" / f"{FEATURES}-k4.h5", centroids)
    config = TrainConfig(features=FEATURES, temporal="none", aggregation="softvlad", **{**FAST, "max_epochs": 1})
    result = train(ws, config)
    record = json.loads((result.directory / "config.json").read_text())["codebook"]
    assert record["source"] == "file" and record["path"].endswith(f"{FEATURES}-k4.h5") and record["alpha"] > 0


def test_codebook_ties_the_soft_assignment_to_its_centres(ws):
    """Eq. 1 → eq. 2 of soft-correlation §3: w_k = 2αc_k, b_k = −α‖c_k‖² + log π_k."""
    centroids = np.random.default_rng(1).normal(size=(4, D)).astype(np.float32)
    path = ws.dir / "codebooks" / "given.h5"
    _save_codebook(path, centroids)
    config = TrainConfig(features=FEATURES, temporal="none", aggregation="softvlad", codebook=str(path), **FAST)
    head = build_head(config, D, 4)
    with FeatureSet.open(ws.features_dir(FEATURES)) as features:
        record = init_aggregation(head, config, path, features, ["Appear_00", "QThenP_01"], [])
    alpha = record["alpha"]
    logits = head.aggregation.encoders["softvlad"].assign.logits
    expected_bias = -alpha * (centroids.astype(np.float64) ** 2).sum(1) + np.log(0.25)
    np.testing.assert_allclose(logits.weight.detach().numpy(), 2 * alpha * centroids, rtol=1e-5)
    np.testing.assert_allclose(logits.bias.detach().numpy(), expected_bias, rtol=1e-5)


def test_codebook_of_the_wrong_size_is_refused(ws, tmp_path):
    path = tmp_path / "k3.h5"
    _save_codebook(path, np.ones((3, D), dtype=np.float32) * np.arange(3)[:, None])
    config = TrainConfig(features=FEATURES, temporal="none", aggregation="concat", codebook=str(path), **FAST)
    with pytest.raises(ConfigError, match="--clusters 3"):
        train(ws, config)
    assert not (ws.dir / "runs").exists()


def test_missing_explicit_codebook_names_vpipe_encode(ws, tmp_path):
    config = TrainConfig(features=FEATURES, temporal="none", codebook=str(tmp_path / "none.h5"), **FAST)
    with pytest.raises(StageError, match="vpipe encode --dataset fake --features li3d-rgb --clusters 4"):
        train(ws, config)
    assert not (ws.dir / "runs").exists()


def test_codebook_with_an_lstm_is_a_config_error():
    with pytest.raises(ConfigError, match="--temporal none"):
        TrainConfig(temporal="bilstm", codebook="x.h5")


# --- data and errors --------------------------------------------------------------------


def test_validation_is_carved_per_class_and_seeded():
    ids = [f"c{c}_{i}" for c in range(3) for i in range(7)] + ["lonely"]
    labels = {v: int(v[1]) if v != "lonely" else 3 for v in ids}
    fit, val = carve_validation(ids, labels, 0.3, seed=5)
    assert sorted(fit + val) == sorted(ids) and not set(fit) & set(val)
    assert [sum(labels[v] == c for v in val) for c in range(4)] == [2, 2, 2, 0]
    assert carve_validation(ids, labels, 0.3, seed=5) == (fit, val)
    assert carve_validation(ids, labels, 0.3, seed=6) != (fit, val)


def test_no_validation_videos_is_a_config_error(ws):
    with pytest.raises(ConfigError, match="--val-fraction"):
        train(ws, TrainConfig(features=FEATURES, **{**FAST, "val_fraction": 0.0}))


def test_missing_features_names_vpipe_extract(ws):
    with pytest.raises(StageError, match="vpipe extract --dataset fake") as error:
        train(ws, TrainConfig(features="i3d-flow", **FAST))
    assert "li3d-rgb" in str(error.value)


def test_unknown_run_names_the_existing_runs(ws):
    train(ws, TrainConfig(features=FEATURES, **{**FAST, "max_epochs": 1}), run_id="first")
    with pytest.raises(StageError, match="completed runs: first"):
        evaluate(ws, "nope")


def test_unknown_run_without_runs_says_how_to_train(ws):
    with pytest.raises(StageError, match="vpipe train --dataset fake"):
        evaluate(ws, "nope")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"temporal": "gru"}, "--temporal"),
        ({"aggregation": "netvlad"}, "--aggregation"),
        ({"dropout": 1.0}, "--dropout"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"clusters": 0}, "--clusters"),
        ({"head": "st-manet"}, "--head"),
    ],
)
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**options)


# --- command line -----------------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _fast_args() -> list[str]:
    return [
        "--hidden", "16", "--clusters", "4", "--batch-size", "8", "--epochs", "4",
        "--lr", "0.01", "--dropout", "0.1", "--threads", "1",
    ]  # fmt: skip


def test_cli_train_evaluate_report(cli, ws):
    runner = CliRunner()
    common = ["--dataset", "fake", "--workspace", str(ws.root)]
    trained = runner.invoke(cli, ["train", *common, *_fast_args(), "--run-id", "cli", "--json"])
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["run_id"] == "cli" and summary["epochs"] == 4 and 0 <= summary["metrics"]["accuracy"] <= 1

    evaluated = runner.invoke(cli, ["evaluate", *common, "--run", "cli", "--json", "--device", "cpu"])
    assert evaluated.exit_code == 0, evaluated.output
    assert _scores(json.loads(evaluated.stdout)) == _scores(summary["metrics"])
    text = runner.invoke(cli, ["evaluate", *common, "--run", "cli", "--device", "cpu"])
    assert "equal to the run's metrics.json" in text.stdout

    reported = runner.invoke(cli, ["report", *common, "--no-tsne"])
    assert reported.exit_code == 0, reported.output
    assert "| cli | li3d-rgb | bilstm | concat | 4 |" in reported.stdout


def test_cli_errors_exit_non_zero_with_the_fix(cli, ws):
    runner = CliRunner()
    common = ["--dataset", "fake", "--workspace", str(ws.root)]
    missing = runner.invoke(cli, ["train", *common, "--features", "r3d50-rgb"])
    assert missing.exit_code == 1 and "vpipe extract --dataset fake" in missing.stderr
    unknown = runner.invoke(cli, ["evaluate", *common, "--run", "nope"])
    assert unknown.exit_code == 1 and "vpipe train" in unknown.stderr
    bad = runner.invoke(cli, ["train", *common, "--temporal", "gru"])
    assert bad.exit_code == 1 and "--temporal" in bad.stderr


@pytest.mark.parametrize("command", ["train", "evaluate", "report"])
def test_every_command_has_a_summary_and_an_example(cli, command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example: vpipe " + command in result.stdout
