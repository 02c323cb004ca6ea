"""The encode stage at scale: streamed encodings, train-only PCA, the primal baseline,
memory budgets, status without work, and a base install without faiss.

References are independent of the code under test: numpy PCA by eigendecomposition,
per-video encodings computed one by one, the SVM objective minimised by scipy in float64.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from tests.test_encode import FEATURES, make_workspace
from vpipe.encode import EncodingReader, encode_bof, encode_fisher, encode_vlad, fit_codebook, load_encodings
from vpipe.encode import baseline as baseline_module
from vpipe.encode.baseline import array_blocks, fit_and_evaluate, fit_svm, run_baseline, train_statistics
from vpipe.encode.budget import MemoryBudgetError, parse_bytes
from vpipe.encode.fit import resolve_pca
from vpipe.encode.pca import fit_pca
from vpipe.errors import ConfigError
from vpipe.stages import encode as encode_stage
from vpipe.stages.encode import EncodeOptions, encode_status, run_encode
from vpipe.store import FeatureSet

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _train_ids(sequences: dict[str, np.ndarray]) -> list[str]:
    return [v for v in sequences if int(v.split("_v")[1]) < 5]


def _numpy_pca(x: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the ``dim`` leading unit eigenvectors (rows) of the sample covariance."""
    x = x.astype(np.float64)
    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False))
    return x.mean(0), vectors[:, np.argsort(values)[::-1][:dim]].T


# --- streaming encodings -----------------------------------------------------------------


def test_streamed_encodings_equal_per_video_encodings_across_shards_and_batches(tmp_path, monkeypatch) -> None:
    """24 videos in 24 shards, written 5 videos per batch and read back 3 rows per block."""
    ws, sequences = make_workspace(tmp_path)
    assert len(list(ws.features_dir(FEATURES).glob("*.h5"))) == 24
    monkeypatch.setattr(encode_stage, "BATCH_BYTES", 5 * 4 * (4 + 4 * 8 + 2 * 4 * 8))
    summary = run_encode(ws, FEATURES, 4, EncodeOptions(niter=10, pca=8, svm_c=1.0))
    book = encode_stage.load_codebook(Path(summary["codebook"]["path"]))
    assert book.dim == 8 and book.input_dim == 32
    for method, encoder in (("bof", encode_bof), ("vlad", encode_vlad), ("fv", encode_fisher)):
        path = Path(summary["encodings"][method]["path"])
        whole = load_encodings(path)
        expected = np.stack([encoder(sequences[v], book) for v in whole.video_id])
        np.testing.assert_allclose(whole.x, expected, rtol=1e-6, atol=1e-7)
        with EncodingReader(path) as reader:
            rows = np.flatnonzero(reader.split == "test")
            blocks = list(reader.blocks(rows, block_bytes=3 * 4 * reader.shape[1]))
        assert len(blocks) > 1
        np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), whole.x[rows])
        np.testing.assert_array_equal(np.concatenate([p for p, _ in blocks]), np.arange(len(rows)))


# --- PCA ---------------------------------------------------------------------------------


def test_pca_matches_numpy_eigendecomposition_and_whitens() -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 3.0).astype(np.float32)
    mean, components = _numpy_pca(x, 3)
    pca = fit_pca(x, 3)
    np.testing.assert_allclose(pca.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(np.abs((pca.components * components).sum(1)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.abs(pca.project(x)), np.abs((x - mean) @ components.T), rtol=1e-5, atol=1e-6)
    white = fit_pca(x, 3, whiten=True).project(x)
    np.testing.assert_allclose(white.std(0, ddof=1), 1.0, rtol=1e-4)
    with pytest.raises(ConfigError, match="--pca must be between 1"):
        fit_pca(x, 7)


def test_pca_is_fitted_on_train_descriptors_only(tmp_path) -> None:
    """An enormous offset on every test video changes neither the PCA nor the codebook."""
    clean, sequences = make_workspace(tmp_path / "clean")
    shifted, _ = make_workspace(tmp_path / "shifted", test_offset=1e4)
    train = _train_ids(sequences)
    books = []
    for ws in (clean, shifted):
        with FeatureSet.open(ws.features_dir(FEATURES)) as features:
            books.append(fit_codebook(features, train, clusters=4, seed=0, niter=10, pca=5))
    mean, components = _numpy_pca(np.concatenate([sequences[v] for v in train]), 5)
    for book in books:
        np.testing.assert_allclose(book.pca.mean, mean, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(np.abs((book.pca.components * components).sum(1)), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(books[0].pca.components, books[1].pca.components)
    np.testing.assert_array_equal(books[0].centroids, books[1].centroids)


def test_auto_pca_needs_ten_descriptors_per_dimension(tmp_path) -> None:
    assert resolve_pca("auto", 1024, 10_239) is None
    assert resolve_pca("auto", 1024, 10_240) == 512
    assert resolve_pca("auto", 1024) == 512 and resolve_pca(0, 1024, 10**6) is None
    assert resolve_pca(16, 32, 5) == 16
    ws, _ = make_workspace(tmp_path)  # 15 train videos: far fewer descriptors than 10 per dimension
    summary = run_encode(ws, FEATURES, 4, EncodeOptions(niter=5, baseline=False))
    assert summary["codebook"]["pca"] is None
    assert run_encode(ws, FEATURES, 4, EncodeOptions(niter=5, baseline=False, pca=16))["codebook"]["pca"]["dim"] == 16


def test_codebook_round_trips_its_pca(tmp_path) -> None:
    ws, sequences = make_workspace(tmp_path)
    summary = run_encode(ws, FEATURES, 4, EncodeOptions(niter=5, methods=["bof"], pca=6, whiten=True, svm_c=1.0))
    book = encode_stage.load_codebook(Path(summary["codebook"]["path"]))
    assert summary["codebook"]["pca"]["dim"] == 6 and book.pca.whiten
    x = sequences["c0_v0"]
    np.testing.assert_allclose(book.project(x), book.pca.project(x))
    assert book.project(x).shape == (len(x), 6)


# --- the baseline ------------------------------------------------------------------------


def _reference_svm(z: np.ndarray, y: np.ndarray, classes: np.ndarray, c: float) -> np.ndarray:
    """The module docstring's objective, minimised by scipy in float64 (weights and bias)."""
    targets = np.where(y[:, None] == classes[None, :], 1.0, -1.0)
    n, d = z.shape

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: d * len(classes)].reshape(d, -1), theta[d * len(classes) :]
        slack = np.maximum(0.0, 1.0 - targets * (z @ w + b))
        grad_scores = -2.0 / n * targets * slack
        loss = (slack**2).sum() / n + ((w**2).sum() + (b**2).sum()) / (2 * c * n)
        return loss, np.concatenate([(z.T @ grad_scores + w / (c * n)).ravel(), grad_scores.sum(0) + b / (c * n)])

    start = np.zeros(d * len(classes) + len(classes))
    return minimize(objective, start, jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "maxiter": 5000}).x


def test_svm_solver_reaches_the_reference_minimum() -> None:
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(3), 10)
    z = rng.normal(size=(30, 5)) + np.eye(3, 5)[y]
    weights, bias, _ = fit_svm(torch.from_numpy(z.astype(np.float32)), y, np.arange(3), 0.5)
    reference = _reference_svm(z, y, np.arange(3), 0.5)
    np.testing.assert_allclose(np.concatenate([weights.numpy().ravel(), bias.numpy()]), reference, atol=2e-3)


def test_streaming_statistics_equal_numpy() -> None:
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(50, 4)) * [1, 10, 1e-3, 0] + [1e3, 0, 5, 7]).astype(np.float32)
    rows = np.arange(3, 47)
    mean, std = train_statistics(array_blocks(x, block_rows=7), rows, 4)
    np.testing.assert_allclose(mean, x[rows].astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(std[:3], x[rows].astype(np.float64).std(0)[:3], rtol=1e-9)
    assert std[3] == 1.0


def test_baseline_chooses_c_from_train_data_only() -> None:
    """Replacing the test split (vectors and labels) changes the metrics, never C or its scores."""
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 12)
    x = rng.normal(size=(36, 12)).astype(np.float32)
    x[:, :3] += 1.5 * np.eye(3, dtype=np.float32)[y]
    train = run_baseline(x[::2], y[::2], x[1::2], y[1::2])
    noisy = run_baseline(x[::2], y[::2], rng.normal(size=(18, 12)).astype(np.float32), rng.permutation(y[1::2]))
    assert train["C_chosen_by"] == "train cross-validation" and train["C"] == noisy["C"]
    assert train["selection"] == noisy["selection"] and train["selection"]["folds"] == 3
    assert train["accuracy"] != noisy["accuracy"]


def test_selection_uses_one_holdout_above_the_scale_threshold(monkeypatch) -> None:
    monkeypatch.setattr(baseline_module, "FEW_FOLDS_ABOVE", 10)
    y = np.repeat(np.arange(2), 10)
    splits = baseline_module.selection_splits(y, seed=0)
    assert len(splits) == 1 and len(splits[0][1]) == 4 and sorted(y[splits[0][1]]) == [0, 0, 1, 1]


def test_a_budget_too_small_is_one_clear_error(tmp_path) -> None:
    ws, _ = make_workspace(tmp_path)
    with pytest.raises(MemoryBudgetError, match=r"k-means sample .* --memory-budget of 1 KiB: lower --sample-size"):
        run_encode(ws, FEATURES, 4, EncodeOptions(memory_budget=1024, baseline=False))
    with pytest.raises(MemoryBudgetError, match=r"the fv linear baseline \(15 train videos × 128\).*--no-baseline"):
        run_encode(ws, FEATURES, 4, EncodeOptions(memory_budget=40_000, pca=16))
    assert not ws.codebook_path(FEATURES, 4).exists()
    options = EncodeOptions(niter=5, memory_budget=40_000, baseline=False, pca=16)
    assert run_encode(ws, FEATURES, 4, options)["baseline"] is None
    x = np.zeros((20, 100), dtype=np.float32)
    with pytest.raises(MemoryBudgetError, match=r"linear baseline on encodings \(10 train videos × 100\)"):
        fit_and_evaluate(array_blocks(x), 100, np.arange(20) % 2, np.array(["train", "test"] * 10), memory_budget=8000)
    assert parse_bytes("1.5G") == 3 << 29 and parse_bytes("512M") == 1 << 29
    with pytest.raises(ConfigError, match="--memory-budget expects"):
        parse_bytes("lots")


def test_within_budget_leaves_out_only_the_baselines_that_do_not_fit(tmp_path, caplog) -> None:
    ws, _ = make_workspace(tmp_path)
    options = {"niter": 5, "svm_c": 1.0, "memory_budget": 40_000, "baseline": "within-budget", "pca": 16}
    with caplog.at_level("WARNING", logger="vpipe.stages.encode"):
        summary = run_encode(ws, FEATURES, 4, EncodeOptions(**options))
    assert set(summary["encodings"]) == {"bof", "vlad", "fv"}
    assert all(Path(e["path"]).is_file() for e in summary["encodings"].values())
    assert set(summary["baseline"]["methods"]) == {"bof", "vlad"}
    assert list(summary["baseline_skipped"]) == ["fv"]
    assert "fv linear baseline needs" in summary["baseline_skipped"]["fv"]
    assert "--methods fv --memory-budget" in caplog.text
    assert all(encode_status(ws, FEATURES, 4, EncodeOptions(**options)).values())
    # A run with every baseline that fits reuses the same artifacts as an explicit one.
    explicit = run_encode(ws, FEATURES, 4, EncodeOptions(**{**options, "baseline": True, "methods": ["bof", "vlad"]}))
    assert not explicit["codebook"]["fitted"]
    with pytest.raises(ConfigError, match="baseline must be"):
        run_encode(ws, FEATURES, 4, EncodeOptions(**{**options, "baseline": "sometimes"}))


# --- status ------------------------------------------------------------------------------


def test_encode_status_agrees_with_what_run_does(tmp_path) -> None:
    ws, _ = make_workspace(tmp_path)
    options = {"methods": ["bof", "vlad"], "niter": 5, "svm_c": 1.0, "pca": 8}
    status = encode_status(ws, FEATURES, 4, EncodeOptions(**options))
    assert status == dict.fromkeys(["codebook", "bof", "vlad", "baseline"], False)
    run_encode(ws, FEATURES, 4, EncodeOptions(**options))
    assert all(encode_status(ws, FEATURES, 4, EncodeOptions(**options)).values())
    assert encode_status(ws, FEATURES, 4, EncodeOptions(**{**options, "svm_c": 0.1})) == {
        "codebook": True, "bof": True, "vlad": True, "baseline": False,
    }  # fmt: skip
    changed = encode_status(ws, FEATURES, 4, EncodeOptions(**{**options, "pca": 6}))
    assert not any(changed.values())
    again = run_encode(ws, FEATURES, 4, EncodeOptions(**options))
    assert not again["codebook"]["fitted"] and not again["baseline"]["written"]


# --- a base install without faiss --------------------------------------------------------


def _without_faiss(code: str) -> subprocess.CompletedProcess[str]:
    prelude = "import sys\nsys.modules['faiss'] = None\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT, timeout=300, check=False
    )


@pytest.mark.slow
def test_cli_runs_without_faiss_and_encode_names_the_extra(tmp_path) -> None:
    result = _without_faiss(
        f"""
        from typer.testing import CliRunner
        from vpipe.cli.app import app
        runner = CliRunner()
        assert runner.invoke(app, ["--help"]).exit_code == 0
        encode = runner.invoke(app, ["encode", "--dataset", "x", "--workspace", {str(tmp_path)!r}])
        print(encode.exit_code)
        print(encode.output)
        """
    )
    assert result.returncode == 0, result.stderr
    code, output = result.stdout.split("\n", 1)
    assert code == "2" and "pip install 'vpipe[cpu]'" in output and "vpipe[gpu]" in output
