"""The encode stage, checked against plain-numpy formulas and scikit-learn.

A fake workspace holds 3 classes × 8 videos (5 train, 3 test each) of 1–2 clips with
τ = 4..8 steps of D = 32 descriptors drawn around two modes per class. K = 6 puts one
centroid on each mode; the baseline uses K = 4, so that some cells hold several modes and
the residual encodings (VLAD, FV) carry class information as well as the histogram.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import typer
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from vpipe.encode import (
    Codebook,
    encode_bof,
    encode_fisher,
    encode_vlad,
    fit_codebook,
    fit_kmeans,
    load_codebook,
    load_encodings,
)
from vpipe.encode.baseline import top_k_accuracy
from vpipe.encode.gmm import VARIANCE_FLOOR, partition_gmm
from vpipe.encode.kmeans import kmeans_parameters
from vpipe.errors import ConfigError, StageError
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.encode import EncodeOptions, run_encode
from vpipe.store import FeatureSet, ShardWriter, shard_name, write_index

D = 32
CLASSES = 3
MODES = 4
FEATURES = "li3d-rgb"


def _codebook(centroids, weights=None, means=None, variances=None) -> Codebook:
    centroids = np.asarray(centroids, dtype=np.float32)
    k, d = centroids.shape
    return Codebook(
        centroids=centroids,
        gmm_weights=np.full(k, 1.0 / k) if weights is None else np.asarray(weights),
        gmm_means=centroids if means is None else np.asarray(means),
        gmm_variances=np.ones((k, d)) if variances is None else np.asarray(variances),
    )


def make_workspace(
    root: Path, *, test_offset: float = 0.0, splits: tuple[str, ...] = ("train",) * 5 + ("test",) * 3, seed: int = 0
) -> tuple[DatasetWorkspace, dict[str, np.ndarray]]:
    """Write a manifest and a ``li3d-rgb`` feature set; return the stored sequences (as read back).

    Every class draws its steps from the same :data:`MODES` well-separated modes, so a
    codebook of that many centroids finds them whatever its seed; a class differs in how
    often it visits each mode (what BoF sees) and by a small offset of its own inside every
    mode (the residuals VLAD and Fisher vectors see). The baseline's accuracy then does
    not hinge on how one k-means run happened to split the modes.
    """
    rng = np.random.default_rng(seed)
    modes = rng.normal(scale=6.0, size=(MODES, D))
    offsets = rng.normal(scale=1.0, size=(CLASSES, D))
    visits = np.full((CLASSES, MODES), 0.3 / (MODES - 1))
    visits[np.arange(CLASSES), np.arange(CLASSES)] = 0.7
    ws = DatasetWorkspace(root, "fake")
    directory = ws.features_dir(FEATURES)
    rows, manifest, sequences = [], [], {}
    for label in range(CLASSES):
        for i, split in enumerate(splits):
            video_id = f"c{label}_v{i}"
            tau, clips = int(rng.integers(4, 9)), int(rng.integers(1, 3))
            offset = test_offset if split == "test" else 0.0
            with ShardWriter(directory / shard_name("extract", video_id), attrs={"backbone": "li3d"}) as writer:
                steps = []
                for clip in range(clips):
                    which = rng.choice(MODES, size=tau, p=visits[label])
                    pool = modes[which] + offsets[label] + rng.normal(scale=0.5, size=(tau, D)) + offset
                    writer.add(video_id, clip, 0, {"pool": pool})
                    steps.append(pool.astype(np.float16).astype(np.float32))
            rows += writer.rows
            sequences[video_id] = np.concatenate(steps)
            manifest.append(
                {"video_id": video_id, "label": label, "label_name": f"class{label}", "split": split, "status": "ok"}
            )
    write_index(directory, rows)
    ws.dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(manifest).to_parquet(ws.manifest_path)
    return ws, sequences


@pytest.fixture
def fake(tmp_path: Path) -> tuple[DatasetWorkspace, dict[str, np.ndarray]]:
    return make_workspace(tmp_path)


def _train_ids(sequences: dict[str, np.ndarray]) -> list[str]:
    return [v for v in sequences if int(v.split("_v")[1]) < 5]


# --- classic encodings against hand-checked values and plain-numpy references ------------


def test_bof_is_the_l1_histogram_of_nearest_centroids() -> None:
    book = _codebook([[0, 0], [10, 0]])
    x = np.array([[1, 0], [9, 0], [8, 1]], dtype=np.float32)
    np.testing.assert_allclose(encode_bof(x, book), [1 / 3, 2 / 3], rtol=1e-6)


def test_vlad_sums_residuals_intra_normalises_then_l2() -> None:
    book = _codebook([[0, 0], [10, 0], [0, 50]])
    x = np.array([[1, 0], [9, 0], [8, 1]], dtype=np.float32)
    # cell 0: (1, 0); cell 1: (-1, 0) + (-2, 1) = (-3, 1) -> /sqrt(10); cell 2 empty; then /sqrt(2)
    expected = np.array([1, 0, -3 / np.sqrt(10), 1 / np.sqrt(10), 0, 0]) / np.sqrt(2)
    np.testing.assert_allclose(encode_vlad(x, book), expected, rtol=1e-6, atol=1e-7)


def test_fisher_vector_of_one_unit_gaussian_by_hand() -> None:
    book = _codebook([[0.0]], weights=[1.0], means=[[0.0]], variances=[[1.0]])
    x = np.array([[1.0], [3.0]], dtype=np.float32)
    # G_mu = (1 + 3) / 2 = 2; G_sigma = ((1 - 1) + (9 - 1)) / (2 sqrt 2) = 2 sqrt 2
    raw = np.array([2.0, 2 * np.sqrt(2)])
    expected = np.sqrt(raw) / np.linalg.norm(np.sqrt(raw))
    np.testing.assert_allclose(encode_fisher(x, book), expected, rtol=1e-6)


def _fisher_reference(x: np.ndarray, w: np.ndarray, mu: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Perronnin et al. 2010, term by term with loops."""
    t_count, k_count = len(x), len(w)
    log_p = np.empty((t_count, k_count))
    for t in range(t_count):
        for k in range(k_count):
            log_p[t, k] = np.log(w[k]) + np.sum(-0.5 * np.log(2 * np.pi * var[k]) - (x[t] - mu[k]) ** 2 / (2 * var[k]))
    gamma = np.exp(log_p - log_p.max(1, keepdims=True))
    gamma /= gamma.sum(1, keepdims=True)
    g_mu, g_sigma = np.zeros_like(mu), np.zeros_like(mu)
    for k in range(k_count):
        sigma = np.sqrt(var[k])
        for t in range(t_count):
            g_mu[k] += gamma[t, k] * (x[t] - mu[k]) / sigma
            g_sigma[k] += gamma[t, k] * ((x[t] - mu[k]) ** 2 / var[k] - 1)
        g_mu[k] /= t_count * np.sqrt(w[k])
        g_sigma[k] /= t_count * np.sqrt(2 * w[k])
    fv = np.concatenate([g_mu.ravel(), g_sigma.ravel()])
    fv = np.sign(fv) * np.sqrt(np.abs(fv))
    return fv / np.linalg.norm(fv)


def test_fisher_vector_matches_a_loop_reference() -> None:
    rng = np.random.default_rng(3)
    mu = rng.normal(size=(3, 4))
    var = rng.uniform(0.5, 2.0, size=(3, 4))
    w = np.array([0.2, 0.3, 0.5])
    x = (mu[rng.integers(0, 3, 7)] + rng.normal(scale=0.8, size=(7, 4))).astype(np.float32)
    book = _codebook(mu, weights=w, means=mu, variances=var)
    np.testing.assert_allclose(encode_fisher(x, book), _fisher_reference(x.astype(np.float64), w, mu, var), atol=1e-6)


def test_fisher_gives_an_empty_gaussian_a_zero_block() -> None:
    book = _codebook([[0.0], [5.0]], weights=[1.0, 0.0])
    fv = encode_fisher(np.array([[1.0], [2.0]], dtype=np.float32), book)
    assert np.all(np.isfinite(fv)) and fv[1] == 0 and fv[3] == 0


def test_top_k_uses_score_ranking() -> None:
    scores = np.array([[0.1, 0.9, 0.5], [0.8, 0.1, 0.2]])
    classes = np.array([4, 5, 6])
    assert top_k_accuracy(scores, classes, np.array([6, 5]), 1) == 0.0
    assert top_k_accuracy(scores, classes, np.array([6, 5]), 2) == 0.5


# --- k-means and GMM statistics ---------------------------------------------------------


def test_faiss_kmeans_matches_sklearn_on_blobs() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=10.0, size=(5, 16))
    x = (centres[rng.integers(0, 5, 2000)] + rng.normal(size=(2000, 16))).astype(np.float32)
    ours = fit_kmeans(x, 5, seed=1, niter=25, use_gpu=False)
    with threadpool_limits(1):
        ref = KMeans(n_clusters=5, n_init=10, random_state=0).fit(x)
    assert ours.objective == pytest.approx(ref.inertia_, rel=0.02)
    rows, cols = linear_sum_assignment(((ours.centroids[:, None] - ref.cluster_centers_[None]) ** 2).sum(-1))
    np.testing.assert_allclose(ours.centroids[rows], ref.cluster_centers_[cols], atol=0.05)
    direct = ((x[:, None] - ours.centroids[None]) ** 2).sum(-1)
    assert ours.objective == pytest.approx(direct.min(1).sum(), rel=1e-5)
    np.testing.assert_array_equal(ours.assignment, direct.argmin(1))


def test_faiss_kmeans_objective_close_to_sklearn_on_unstructured_data() -> None:
    x = np.random.default_rng(1).normal(size=(2000, 8)).astype(np.float32)
    ours = fit_kmeans(x, 16, seed=0, niter=30, use_gpu=False)
    with threadpool_limits(1):
        ref = KMeans(n_clusters=16, n_init=3, random_state=0).fit(x)
    assert ours.objective == pytest.approx(ref.inertia_, rel=0.05)


def test_kmeans_uses_every_sample_point() -> None:
    """With K=1 the centroid is the mean of the points used: faiss's default would use 256."""
    x = np.random.default_rng(2).exponential(size=(1000, 4)).astype(np.float32)
    result = fit_kmeans(x, 1, seed=0, niter=1, use_gpu=False)
    np.testing.assert_allclose(result.centroids[0], x.mean(0), rtol=1e-5)
    assert kmeans_parameters(100_000, 128, seed=0, niter=20)["max_points_per_centroid"] * 128 >= 100_000


def test_partition_gmm_equals_numpy_per_cell_statistics() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    x[0] = x[1] = [7, 7, 7]
    assignment = np.concatenate([[2, 2], rng.integers(0, 2, 48)])
    centroids = rng.normal(size=(4, 3)).astype(np.float32)
    gmm = partition_gmm(x, assignment, centroids)
    floor = VARIANCE_FLOOR * x.astype(np.float64).var(0).mean()
    for k in range(3):
        members = x[assignment == k].astype(np.float64)
        assert gmm.weights[k] == len(members) / 50
        np.testing.assert_allclose(gmm.means[k], members.mean(0))
        np.testing.assert_allclose(gmm.variances[k], np.maximum(members.var(0), floor))
    assert gmm.weights[3] == 0 and np.all(gmm.means[3] == centroids[3])
    np.testing.assert_allclose(gmm.variances[2], floor)


def test_codebook_gmm_matches_statistics_of_its_own_partition(fake) -> None:
    ws, sequences = fake
    train = _train_ids(sequences)
    with FeatureSet.open(ws.features_dir(FEATURES)) as features:
        book = fit_codebook(features, train, clusters=6, seed=0, niter=20)
    x = np.concatenate([sequences[v] for v in train]).astype(np.float64)
    assert book.provenance["sample_size"] == len(x)
    nearest = ((x[:, None] - book.centroids[None].astype(np.float64)) ** 2).sum(-1).argmin(1)
    floor = VARIANCE_FLOOR * x.var(0).mean()
    for k in range(6):
        members = x[nearest == k]
        assert book.gmm_weights[k] == pytest.approx(len(members) / len(x))
        np.testing.assert_allclose(book.gmm_means[k], members.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(book.gmm_variances[k], np.maximum(members.var(0), floor), rtol=1e-4, atol=1e-6)


def test_codebook_is_fitted_on_train_descriptors_only(tmp_path: Path) -> None:
    ws, sequences = make_workspace(tmp_path, test_offset=1000.0)
    with FeatureSet.open(ws.features_dir(FEATURES)) as features:
        book = fit_codebook(features, _train_ids(sequences), clusters=6, seed=0, niter=10)
    assert np.abs(book.centroids).max() < 100


def test_requested_sample_size_is_used_and_reported(fake) -> None:
    ws, sequences = fake
    with FeatureSet.open(ws.features_dir(FEATURES)) as features:
        book = fit_codebook(features, _train_ids(sequences), clusters=4, sample_size=37, seed=0, niter=5)
        with pytest.raises(ConfigError, match="larger than the sample"):
            fit_codebook(features, _train_ids(sequences), clusters=40, sample_size=37, seed=0, niter=5)
    assert book.provenance["sample_size"] == 37
    counts = book.gmm_weights.astype(np.float64) * 37
    np.testing.assert_allclose(counts, counts.round(), atol=1e-4)
    assert counts.round().sum() == 37


# --- the stage: artifacts, resume, baseline, errors -------------------------------------


def test_run_encode_writes_codebook_encodings_and_a_baseline(fake) -> None:
    ws, sequences = fake
    summary = run_encode(ws, FEATURES, 4, EncodeOptions(seed=0, niter=20, pca=D // 2))
    book = load_codebook(Path(summary["codebook"]["path"]))
    assert book.centroids.shape == (4, D // 2) and book.centroids.dtype == np.float32
    assert book.input_dim == D and summary["codebook"]["pca"]["dim"] == D // 2
    prov = book.provenance
    assert prov["train_videos"] == 15 and prov["clusters"] == 4 and prov["features"] == FEATURES
    assert prov["features_provenance"] == {"backbone": "li3d"} and prov["device"] == "cpu"
    for method, encoder in (("bof", encode_bof), ("vlad", encode_vlad), ("fv", encode_fisher)):
        data = load_encodings(Path(summary["encodings"][method]["path"]))
        assert data.x.shape == (24, summary["encodings"][method]["dim"]) and data.x.dtype == np.float32
        assert sorted(set(data.split)) == ["test", "train"]
        row = list(data.video_id).index("c2_v6")
        np.testing.assert_allclose(data.x[row], encoder(sequences["c2_v6"], book), rtol=1e-6, atol=1e-7)
    results = summary["baseline"]["methods"]
    for method in ("bof", "vlad", "fv"):
        assert results[method]["accuracy"] >= 0.85 and results[method]["macro_recall"] >= 0.85
        assert results[method]["top5"] == 1.0 and results[method]["C_chosen_by"] == "train cross-validation"
        assert np.array(results[method]["confusion"]).sum() == 9
    stored = json.loads(Path(summary["baseline"]["path"]).read_text())
    assert stored["methods"]["bof"]["accuracy"] == results["bof"]["accuracy"]


def test_rerun_skips_and_changes_rewrite(fake) -> None:
    ws, _ = fake
    first = run_encode(ws, FEATURES, 6, EncodeOptions(methods=["bof"], niter=5, svm_c=1.0))
    paths = [Path(first["codebook"]["path"]), Path(first["encodings"]["bof"]["path"]), Path(first["baseline"]["path"])]
    mtimes = [p.stat().st_mtime_ns for p in paths]
    again = run_encode(ws, FEATURES, 6, EncodeOptions(methods=["bof"], niter=5, svm_c=1.0))
    assert not again["codebook"]["fitted"] and not again["encodings"]["bof"]["written"]
    assert not again["baseline"]["written"]
    assert [p.stat().st_mtime_ns for p in paths] == mtimes
    reseeded = run_encode(ws, FEATURES, 6, EncodeOptions(methods=["bof"], niter=5, seed=1, svm_c=1.0))
    assert reseeded["codebook"]["fitted"] and reseeded["encodings"]["bof"]["written"]
    assert paths[0].stat().st_mtime_ns != mtimes[0]
    other_k = run_encode(ws, FEATURES, 4, EncodeOptions(methods=["bof"], niter=5, svm_c=1.0))
    assert other_k["codebook"]["fitted"] and other_k["codebook"]["path"].endswith(f"{FEATURES}-k4.h5")
    with h5py.File(other_k["encodings"]["bof"]["path"]) as handle:
        assert handle["X"].shape == (24, 4)
    assert not list(ws.dir.rglob(".*.tmp"))


def test_missing_features_names_the_extract_command(tmp_path: Path) -> None:
    ws, _ = make_workspace(tmp_path)
    with pytest.raises(StageError, match="vpipe extract --dataset fake"):
        run_encode(ws, "i3d-flow", 6)


def test_no_train_videos_is_an_error(tmp_path: Path) -> None:
    ws, _ = make_workspace(tmp_path, splits=("test",) * 4)
    with pytest.raises(StageError, match="no train videos"):
        run_encode(ws, FEATURES, 6)


def test_bad_options_are_config_errors(fake) -> None:
    ws, _ = fake
    with pytest.raises(ConfigError, match="larger than the sample"):
        run_encode(ws, FEATURES, 6, EncodeOptions(sample_size=5))
    with pytest.raises(ConfigError, match="unknown encoding"):
        run_encode(ws, FEATURES, 6, EncodeOptions(methods=["netvlad"]))


# --- the command ------------------------------------------------------------------------


@pytest.fixture
def cli() -> typer.Typer:
    from vpipe.cli.encode_cmd import register

    app = typer.Typer()
    app.callback()(lambda: None)
    register(app)
    return app


def test_cli_end_to_end(fake, cli) -> None:
    ws, _ = fake
    runner = CliRunner()
    args = ["encode", "--dataset", "fake", "--workspace", str(ws.root), "--clusters", "6", "--svm-c", "1"]
    result = runner.invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["codebook"]["fitted"] and summary["codebook"]["train_videos"] == 15
    assert set(summary["encodings"]) == {"bof", "vlad", "fv"}
    table = runner.invoke(cli, [*args, "--methods", "bof,vlad,fv"])
    assert table.exit_code == 0 and "up to date" in table.stdout and "accuracy" in table.stdout


def test_cli_errors_and_help(fake, cli) -> None:
    ws, _ = fake
    runner = CliRunner()
    missing = runner.invoke(cli, ["encode", "--dataset", "fake", "--workspace", str(ws.root), "--features", "nope"])
    assert missing.exit_code == 1 and "vpipe extract" in missing.output
    help_text = runner.invoke(cli, ["encode", "--help"]).output
    assert "Example: vpipe encode" in help_text


def test_baseline_survives_denormal_and_constant_columns() -> None:
    """Fisher vectors of nearly empty cells have float32-denormal spreads; they must not become NaN."""
    from vpipe.encode.baseline import run_baseline

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 12)
    x = rng.normal(size=(36, 10)).astype(np.float32)
    x[:, :3] += 3 * np.eye(3, dtype=np.float32)[y]
    x[:, 4] = (1e-41 * rng.normal(size=36)).astype(np.float32)
    x[:, 5] = 0.0
    result = run_baseline(x[::2], y[::2], x[1::2], y[1::2], c=1.0)
    assert result["accuracy"] >= 0.8
