"""Training heads on a fake feature cache: artifacts, accuracy, determinism, errors.

The fake cache (tests/fake_cache.py) has 4 classes, two of which differ only in the
temporal order of their steps, so any order-less pooling of the raw steps is at chance
on them and only a temporal model separates all four.
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

from tests.fake_cache import CLASS_NAMES, D, FEATURES, make_workspace
from vpipe.artifacts.run_record import RunRecord
from vpipe.cli.train_cmd import register
from vpipe.encode import Codebook, save_codebook
from vpipe.errors import ConfigError, StageError
from vpipe.models.heads import create_head
from vpipe.models.heads.registry import PrepareData
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.main_job import pipeline_config
from vpipe.train import TrainConfig, evaluate, existing_run, train
from vpipe.train.data import carve_validation
from vpipe.train.metrics import TIMING_KEYS

#: Small and quick, still a BiLSTM with the three soft encodings averaged (the default).
FAST_HEAD = dict(hidden=16, clusters=4, dropout=0.1)
FAST = dict(batch_size=8, max_epochs=25, patience=25, lr=1e-2)
_HEAD_KEYS = {"layer", "temporal", "aggregation", "clusters", "out_dim", "hidden", "dropout", "codebook"}


def cfg(**options) -> TrainConfig:
    """A fast bilstm-softagg config; head options and training options in one call."""
    head = {**FAST_HEAD, **{k: v for k, v in options.items() if k in _HEAD_KEYS}}
    rest = {**FAST, **{k: v for k, v in options.items() if k not in _HEAD_KEYS}}
    rest.setdefault("features", FEATURES)
    return TrainConfig(head_options=head, **rest)


@pytest.fixture(autouse=True)
def _few_threads():
    """The test machine's cores are shared; one torch thread is fastest for these sizes (two contend)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def ws(tmp_path: Path) -> DatasetWorkspace:
    return make_workspace(tmp_path)


def _history_without_time(run_dir: Path) -> pd.DataFrame:
    return pd.read_csv(run_dir / "history.csv").drop(columns="seconds")


def _scores(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


# --- training ---------------------------------------------------------------------------


def test_bilstm_learns_temporal_order_and_writes_every_artifact(ws):
    result = train(ws, cfg(temporal="bilstm"))
    assert result.run_id == "li3d-rgb-bilstm-mean-k4-s0"
    assert result.directory == ws.dir / "runs" / result.run_id
    assert result.metrics["accuracy"] >= 0.9

    config = json.loads((result.directory / "config.json").read_text())
    assert config["train"] == cfg().to_dict()
    assert config["model"] == {"head": "bilstm-softagg", "late_fusion": False, "shapes": {"x": [D]}, "num_classes": 4}
    assert config["inputs"] == [{"role": "x", "features": [FEATURES], "layer": "pool", "layout": "steps"}]
    record = config["features"][FEATURES]
    assert record["provenance"] == {"backbone": "fake"} and len(record["index_sha256"]) == 64
    assert config["data"]["class_names"] == CLASS_NAMES
    assert len(config["data"]["test"]) == 12 and len(config["data"]["train"]) + len(config["data"]["val"]) == 28
    assert config["prepared"]["source"].startswith("k-means on untrained bilstm outputs")

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
    assert RunRecord.from_directory(result.directory).best_epoch == result.best_epoch, "the history replays the kept epoch"
    assert checkpoint["config"]["run_id"] == result.run_id


def test_order_less_average_cannot_separate_reversed_classes(ws):
    """The fake data's premise: the plain average of raw steps is blind to order."""
    result = train(ws, cfg(temporal="none", aggregation="avg"))
    recall = [row["recall"] for row in result.metrics["per_class"]]
    assert recall[0] == recall[1] == 1.0
    assert result.metrics["accuracy"] < 0.9


def test_same_seed_gives_identical_history_and_metrics(ws):
    config = cfg(max_epochs=6)
    first = train(ws, config)
    second = train(ws, config)
    assert second.run_id == f"{first.run_id}-2"
    pd.testing.assert_frame_equal(_history_without_time(first.directory), _history_without_time(second.directory))
    assert _scores(first.metrics) == _scores(second.metrics)
    other_seed = train(ws, cfg(max_epochs=6, seed=1))
    assert not _history_without_time(other_seed.directory).equals(_history_without_time(first.directory))


def test_evaluate_reproduces_metrics_json(ws):
    config = cfg(temporal="lstm", aggregation="softvlad", max_epochs=6)
    result = train(ws, config)
    metrics = evaluate(ws, result.run_id, device="cpu")
    stored = json.loads((result.directory / "metrics.json").read_text())
    assert _scores(metrics) == _scores(stored)
    assert json.loads((result.directory / "evaluation.json").read_text()) == metrics


def test_early_stopping_stops_after_patience_epochs_without_improvement(ws):
    """With lr 0 nothing improves after epoch 1, so patience 2 ends the run at epoch 3."""
    result = train(ws, cfg(lr=0.0, patience=2, max_epochs=20))
    assert len(result.history) == 3
    assert result.stopped_early and result.best_epoch == 1
    assert torch.load(result.directory / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert RunRecord.from_directory(result.directory).best_epoch == 1, "a tie keeps the earlier epoch"


def test_reuse_returns_the_finished_identical_run(ws):
    config = cfg(max_epochs=2)
    first = train(ws, config, reuse=True)
    again = train(ws, config, reuse=True)
    assert again.reused and again.run_id == first.run_id and again.metrics == first.metrics
    changed = train(ws, cfg(max_epochs=2, hidden=8), reuse=True)
    assert not changed.reused and changed.run_id == f"{first.run_id}-2"


def test_a_bumped_head_version_makes_finished_runs_stale(ws, monkeypatch):
    """A changed head default or equation is a version bump: old runs are not reused as current."""
    config = cfg(max_epochs=1)
    first = train(ws, config, reuse=True)
    assert first.run_id == config.default_run_id()
    monkeypatch.setattr(config.head_spec, "version", config.head_spec.version + 1)  # declared in vpipe.head_specs
    bumped = train(ws, config, reuse=True)
    assert not bumped.reused and bumped.run_id == f"{first.run_id}-2"
    assert train(ws, config, reuse=True).reused, "the new version's run is reused in turn"
    monkeypatch.undo()
    assert train(ws, config, reuse=True).run_id == first.run_id, "the declared version keeps the fingerprint it always had"


def test_pipeline_entry_trains_once_then_reuses(ws):
    assert existing_run(ws, pipeline_config(FEATURES, max_epochs=2)) is None
    first = train(ws, pipeline_config(FEATURES, max_epochs=2), reuse=True, threads=1)
    assert not first.reused and first.run_id == "li3d-rgb-bilstm-mean-k16-s0"
    assert existing_run(ws, pipeline_config(FEATURES, max_epochs=2)).run_id == first.run_id
    again = train(ws, pipeline_config(FEATURES, max_epochs=2), reuse=True, threads=1)
    assert again.reused and again.run_id == first.run_id


def test_explicit_run_id_is_used_and_never_overwritten(ws):
    config = cfg(max_epochs=1)
    assert train(ws, config, run_id="mine").directory == ws.dir / "runs" / "mine"
    with pytest.raises(ConfigError, match="already exists"):
        train(ws, config, run_id="mine")
    with pytest.raises(ConfigError, match="invalid run id"):
        train(ws, config, run_id="../elsewhere")


# --- codebook initialisation --------------------------------------------------------------


def _save_codebook(path: Path, centroids: np.ndarray, index_sha256: str | None = None) -> None:
    k, d = centroids.shape
    provenance = {"fingerprint": "test", "features_index_sha256": index_sha256}
    save_codebook(path, Codebook(centroids, np.full(k, 1 / k), centroids, np.ones((k, d)), provenance=provenance))


def test_temporal_none_starts_from_the_workspace_codebook(ws):
    centroids = np.random.default_rng(0).normal(scale=2.0, size=(4, D)).astype(np.float32)
    with ws.open_features(FEATURES) as features:
        current = features.index_sha256
    _save_codebook(ws.dir / "codebooks" / f"{FEATURES}-k4.h5", centroids, current)
    config = cfg(temporal="none", aggregation="softvlad", max_epochs=1)
    result = train(ws, config)
    record = json.loads((result.directory / "config.json").read_text())["prepared"]
    assert record["source"] == "file" and record["path"].endswith(f"{FEATURES}-k4.h5") and record["alpha"] > 0


def test_a_codebook_fitted_on_earlier_features_is_not_used(ws):
    """Features re-extracted with another layout leave the old codebook behind: its
    centres have another size, so a run must fit its own instead of failing on them."""
    stale = np.random.default_rng(0).normal(size=(4, 36)).astype(np.float32)
    _save_codebook(ws.dir / "codebooks" / f"{FEATURES}-k4.h5", stale, "index-of-earlier-features")
    result = train(ws, cfg(temporal="none", aggregation="softvlad", max_epochs=1))
    record = json.loads((result.directory / "config.json").read_text())["prepared"]
    assert record["source"].startswith("k-means on backbone features")


def test_codebook_ties_the_soft_assignment_to_its_centres(ws):
    """Eq. 1 → eq. 2 of soft-correlation §3: w_k = 2αc_k, b_k = −α‖c_k‖² + log π_k."""
    centroids = np.random.default_rng(1).normal(size=(4, D)).astype(np.float32)
    path = ws.dir / "codebooks" / "given.h5"
    _save_codebook(path, centroids)
    options = {**FAST_HEAD, "temporal": "none", "aggregation": "softvlad", "codebook": str(path)}
    head = create_head("bilstm-softagg", {"x": (D,)}, 4, **options)
    sample = np.random.default_rng(2).normal(size=(50, D)).astype(np.float32)
    data = PrepareData(sample=lambda role, limit: sample, batches=lambda: iter(()), files={"codebook": path}, fit_videos=2, seed=0)
    record = head.prepare(data)
    alpha = record["alpha"]
    # prepare() standardised the inputs with the sample's statistics; the centres live in those units.
    mean, std = sample.astype(np.float64).mean(0), sample.astype(np.float64).std(0)
    z = (centroids - mean) / std
    logits = head.model.aggregation.encoders["softvlad"].assign.logits
    expected_bias = -alpha * (z**2).sum(1) + np.log(0.25)
    np.testing.assert_allclose(logits.weight.detach().numpy(), 2 * alpha * z, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits.bias.detach().numpy(), expected_bias, rtol=1e-4)


def test_codebook_of_the_wrong_size_is_refused(ws, tmp_path):
    path = tmp_path / "k3.h5"
    _save_codebook(path, np.ones((3, D), dtype=np.float32) * np.arange(3)[:, None])
    config = cfg(temporal="none", aggregation="concat", codebook=str(path))
    with pytest.raises(ConfigError, match="clusters=3"):
        train(ws, config)
    assert not (ws.dir / "runs").exists()


def test_missing_explicit_codebook_names_vpipe_encode(ws, tmp_path):
    config = cfg(temporal="none", codebook=str(tmp_path / "none.h5"))
    with pytest.raises(StageError, match="vpipe encode --features li3d-rgb --clusters 4"):
        train(ws, config)
    assert not (ws.dir / "runs").exists()


def test_codebook_with_an_lstm_is_a_config_error():
    with pytest.raises(ConfigError, match="temporal=none"):
        TrainConfig(head_options={"temporal": "bilstm", "codebook": "x.h5"})


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
        train(ws, cfg(val_fraction=0.0))


def test_missing_features_names_vpipe_extract(ws):
    with pytest.raises(StageError, match="vpipe extract --dataset fake") as error:
        train(ws, cfg(features="i3d-flow"))
    assert "li3d-rgb" in str(error.value)


def test_unknown_run_names_the_existing_runs(ws):
    train(ws, cfg(max_epochs=1), run_id="first")
    with pytest.raises(StageError, match="completed runs: first"):
        evaluate(ws, "nope")


def test_unknown_run_without_runs_says_how_to_train(ws):
    with pytest.raises(StageError, match="vpipe train --dataset fake"):
        evaluate(ws, "nope")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"head_options": {"temporal": "gru"}}, "temporal='gru' is not one of"),
        ({"head_options": {"aggregation": "netvlad"}}, "aggregation='netvlad'"),
        ({"head_options": {"dropout": 1.0}}, "dropout"),
        ({"head_options": {"clusters": 0}}, "clusters must be at least 1"),
        ({"head_options": {"hiden": 3}}, "no option hiden; its options: layer"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"head": "st-mannet"}, "unknown head 'st-mannet'"),
        ({"fusion": "middle"}, "--fusion"),
        ({"features": ("a", "a")}, "twice"),
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
        "-O", "hidden=16", "-O", "clusters=4", "--batch-size", "8", "--epochs", "4",
        "--lr", "0.01", "-O", "dropout=0.1", "--threads", "1",
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
    assert "| cli | bilstm-softagg | li3d-rgb | clusters=4 hidden=16 dropout=0.1 |" in reported.stdout


def test_cli_errors_exit_non_zero_with_the_fix(cli, ws):
    runner = CliRunner()
    common = ["--dataset", "fake", "--workspace", str(ws.root)]
    missing = runner.invoke(cli, ["train", *common, "--features", "r3d50-rgb"])
    assert missing.exit_code == 1 and "vpipe extract --dataset fake" in missing.stderr
    unknown = runner.invoke(cli, ["evaluate", *common, "--run", "nope"])
    assert unknown.exit_code == 1 and "vpipe train" in unknown.stderr
    bad = runner.invoke(cli, ["train", *common, "-O", "temporal=gru"])
    assert bad.exit_code == 1 and "temporal='gru'" in bad.stderr


@pytest.mark.parametrize("command", ["heads", "train", "evaluate", "report"])
def test_every_command_has_a_summary_and_an_example(cli, command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0
    assert "Example: vpipe " + command in result.stdout


def test_two_phase_schedule_drops_the_rate_tenfold_from_the_first_phase_best(ws):
    result = train(ws, cfg(max_epochs=4, schedule="two-phase"))
    assert result.history["lr"].tolist() == pytest.approx([1e-2, 1e-2, 1e-3, 1e-3])
    assert result.run_id == "li3d-rgb-bilstm-mean-k4-two-phase-s0"


def test_cli_mean_aggregation_trains_with_no_other_option(cli, ws):
    """§4.1's average of the three encodings needs no projection size from the user."""
    runner = CliRunner()
    common = ["--dataset", "fake", "--workspace", str(ws.root)]
    args = ["train", *common, "-O", "aggregation=mean", "--epochs", "1", "--threads", "1", "--json"]
    trained = runner.invoke(cli, args)
    assert trained.exit_code == 0, trained.output
    summary = json.loads(trained.stdout)
    assert summary["run_id"] == "li3d-rgb-bilstm-mean-k128-s0"
    config = json.loads((ws.dir / "runs" / summary["run_id"] / "config.json").read_text())
    assert config["train"]["head_options"]["aggregation"] == "mean"
    assert config["train"]["head_options"]["hidden"] == 256


@pytest.mark.parametrize("scale, blow_up", [(1e-3, False), (1e3, False), (1e-3, True)])
def test_clip_gradients_is_torchs_clipping_bit_for_bit(scale, blow_up):
    """Below the bound nothing changes, above it every gradient is scaled, and an infinite
    gradient (norm inf, scale 0) zeroes the others as torch's does."""
    from vpipe.train.trainer import clip_gradients

    g = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5, 7, generator=g)) for _ in range(3)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    for a, b in zip(ours, theirs):
        a.grad = torch.randn(a.shape, generator=g) * scale
        b.grad = a.grad.clone()
    if blow_up:
        ours[0].grad[0, 0] = theirs[0].grad[0, 0] = float("inf")
    clip_gradients(ours, 5.0)
    torch.nn.utils.clip_grad_norm_(theirs, 5.0)
    for a, b in zip(ours, theirs):
        assert torch.allclose(a.grad, b.grad, rtol=0.0, atol=0.0, equal_nan=True)
