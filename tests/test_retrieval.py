"""Retrieval: ``vpipe index`` / ``vpipe search`` against numpy references and hand-computed metrics.

Most tests use a fake workspace whose encodings file holds vectors chosen by the test,
so rankings can be checked against a brute-force numpy cosine ranking and metrics
against values worked out by hand. The new-video tests run the real chain (probe,
plan, LI3D extraction) on ten tiny generated videos and query with a copy of one of
them under another name.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from vpipe.encode import Codebook, encode_vlad, save_codebook
from vpipe.encode.encoding_io import EncodingWriter
from vpipe.errors import ConfigError, StageError
from vpipe.pipeline.executor import InProcessExecutor
from vpipe.pipeline.runner import run_stage
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.artifacts.provenance import FeatureProvenance
from vpipe.retrieval.query_video import query_video
from vpipe.retrieval import (
    Index,
    IndexOptions,
    build_index,
    evaluate_index,
    faiss_index,
    retrieval_metrics,
    store,
)
from vpipe.stages.dataset import configure_dataset
from vpipe.stages.extract import ExtractStage
from vpipe.stages.flow import FlowStage
from vpipe.stages.plan import PlanStage
from vpipe.stages.probe import ProbeStage
from vpipe.store import FeatureSet, ShardWriter, shard_name, write_index
from vpipe.video.plan import sampler_config
from vpipe.video.write import write_video

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* has no weights:UserWarning")

runner = CliRunner()


def cli() -> typer.Typer:
    """Only the retrieval commands, so these tests do not depend on the other command modules."""
    from vpipe.cli.retrieval_cmd import register

    app = typer.Typer()
    register(app)
    return app


def invoke(*args: object):
    return runner.invoke(cli(), [str(a) for a in args], catch_exceptions=False)


# --- a fake workspace holding chosen vectors ------------------------------------------------


def fake_workspace(root: Path, videos: dict[str, tuple[int, str, np.ndarray]], name: str = "toy") -> DatasetWorkspace:
    """Manifest, encodings ``toy-k1-vlad`` holding ``videos``' vectors, and the ``toy`` feature
    set they claim to come from (one video: only its provenance is read).

    ``videos`` maps video_id -> (label, split, vector).
    """
    ws = DatasetWorkspace(root, "fake")
    ws.dir.mkdir(parents=True, exist_ok=True)
    manifest = pd.DataFrame(
        [
            {"video_id": v, "path": f"/videos/{v}.avi", "label": label, "label_name": f"class{label}",
             "split": split, "status": "ok", "fps": 25.0}
            for v, (label, split, _) in videos.items()
        ]
    )  # fmt: skip
    manifest.to_parquet(ws.manifest_path)
    directory = ws.features_dir(name)
    with ShardWriter(directory / shard_name("extract", "all"), attrs={"backbone": "li3d", "stream": "rgb"}) as writer:
        writer.add(next(iter(videos)), 0, 0, {"pool": np.ones((2, 4), np.float32)})
    write_index(directory, writer.rows)
    write_encodings(ws, videos, fingerprint="enc-1", name=name)
    return ws


def write_encodings(
    ws: DatasetWorkspace, videos: dict[str, tuple[int, str, np.ndarray]], *, fingerprint: str, name: str = "toy"
) -> Path:
    path = ws.encoding_path(name, 1, "vlad")
    rows = pd.DataFrame(
        [{"video_id": v, "label": label, "split": split} for v, (label, split, _) in videos.items()]
    )
    dim = len(next(iter(videos.values()))[2])
    provenance = {"method": "vlad", "features": name, "layer": "pool", "clusters": 1, "codebook_fingerprint": "cb"}
    with EncodingWriter(path, rows, dim, fingerprint=fingerprint, provenance=provenance) as writer:
        for row, (_, _, vector) in enumerate(videos.values()):
            writer.write(row, np.asarray(vector, np.float32))
    return path


def clustered_videos(n: int, dim: int, seed: int = 0) -> dict[str, tuple[int, str, np.ndarray]]:
    """n vectors around 8 centres (label = centre), every fourth one ``test``; norms vary."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, dim))
    labels = rng.integers(0, 8, size=n)
    x = (centres[labels] + 0.6 * rng.normal(size=(n, dim))) * rng.uniform(0.5, 3.0, size=(n, 1))
    return {f"v{i:05d}": (int(labels[i]), "test" if i % 4 == 3 else "train", x[i]) for i in range(n)}


def numpy_ranking(
    videos: dict[str, tuple[int, str, np.ndarray]], query: np.ndarray, split: str | None = None, centre: bool = True
):
    """Ids and cosines of ``videos`` by decreasing cosine with ``query``: the reference.

    With ``centre``, the mean of every video's unit vector is subtracted from the unit
    gallery vectors and the unit query before the cosine (what ``vpipe index`` does).
    """
    every = np.stack([videos[v][2] for v in videos]).astype(np.float64)
    every /= np.linalg.norm(every, axis=1, keepdims=True)
    mean = every.mean(axis=0) if centre else np.zeros(every.shape[1])
    ids = [v for v, (_, s, _) in videos.items() if split is None or s == split]
    x = every[[list(videos).index(v) for v in ids]] - mean
    q = np.asarray(query, np.float64) / np.linalg.norm(query) - mean
    cos = x @ q / (np.linalg.norm(x, axis=1) * np.linalg.norm(q))
    order = np.argsort(-cos, kind="stable")
    return [ids[i] for i in order], cos[order]


# --- exact search ---------------------------------------------------------------------------


def test_exact_search_matches_a_numpy_cosine_ranking(tmp_path: Path) -> None:
    videos = clustered_videos(300, 24)
    ws = fake_workspace(tmp_path, videos)
    summary = build_index(ws, "encodings:toy-k1-vlad")
    assert (summary["kind"], summary["count"], summary["dim"], summary["written"]) == ("flat", 300, 24, True)
    index = Index.open(tmp_path, "fake", "toy-k1-vlad")
    rng = np.random.default_rng(1)
    for _ in range(5):
        query = rng.normal(size=24)
        ids, cos = numpy_ranking(videos, query)
        hits = index.search(query, k=20)
        assert [h.video_id for h in hits] == ids[:20]
        np.testing.assert_allclose([h.score for h in hits], cos[:20], atol=1e-5)
        train_ids, train_cos = numpy_ranking(videos, query, split="train")
        hits = index.search(query * 7.0, k=15, split="train")
        assert [h.video_id for h in hits] == train_ids[:15]
        np.testing.assert_allclose([h.score for h in hits], train_cos[:15], atol=1e-5)
    # by id: the video's own vector, itself left out of its neighbours
    ids, cos = numpy_ranking(videos, videos["v00007"][2])
    assert ids[0] == "v00007"
    hits = index.search("v00007", k=10)
    assert [h.video_id for h in hits] == ids[1:11]
    assert hits[0].label == videos[ids[1]][0] and hits[0].path == f"/videos/{ids[1]}.avi"


def test_centring_and_whitening_match_a_numpy_reference(tmp_path: Path) -> None:
    # a large shared component: raw cosines bunch near 1, centred ones spread out
    videos = {v: (label, split, x + 40.0) for v, (label, split, x) in clustered_videos(200, 16, seed=4).items()}
    ws = fake_workspace(tmp_path, videos)
    raw = build_index(ws, "encodings:toy-k1-vlad", IndexOptions(centre=False, name="raw"))
    centred = build_index(ws, "encodings:toy-k1-vlad", IndexOptions(name="centred"))
    assert (raw["centred"], centred["centred"], centred["whitened"]) == (False, True, False)
    assert raw["score_spread"]["indexed"]["p1"] > 0.99
    assert centred["score_spread"]["indexed"]["p1"] < 0.5
    assert centred["score_spread"]["raw"] == pytest.approx(raw["score_spread"]["indexed"])
    index = Index.open(tmp_path, "fake", "centred")
    query = np.random.default_rng(5).normal(size=16) + 40.0
    ids, cos = numpy_ranking(videos, query)
    hits = index.search(query, k=10)
    assert [h.video_id for h in hits] == ids[:10]
    np.testing.assert_allclose([h.score for h in hits], cos[:10], atol=1e-5)

    whitened = build_index(ws, "encodings:toy-k1-vlad", IndexOptions(whiten=True, name="white"))
    assert whitened["whitened"] and whitened["dim"] == 16
    x = np.stack([v[2] for v in videos.values()])
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    mean = x.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(x - mean, rowvar=False))  # independent of the SVD route
    white = (x - mean) @ vectors / np.sqrt(values)
    np.testing.assert_allclose(np.cov(white, rowvar=False), np.eye(16), atol=1e-6)
    q = query / np.linalg.norm(query) - mean
    qw = q @ vectors / np.sqrt(values)
    cos = white @ qw / np.linalg.norm(white, axis=1) / np.linalg.norm(qw)
    order = np.argsort(-cos)[:10]
    hits = Index.open(tmp_path, "fake", "white").search(query, k=10)
    assert [h.video_id for h in hits] == [list(videos)[i] for i in order]
    np.testing.assert_allclose([h.score for h in hits], cos[order], atol=1e-4)

    result = invoke("index", "--dataset", "fake", "--workspace", tmp_path, "--embedding", "encodings:toy-k1-vlad",
                    "--whiten", "--name", "white")  # fmt: skip
    assert result.exit_code == 0 and "up to date" in result.output and "whitened" in result.output, result.output


def test_index_kind_follows_size_and_exact_forces_flat() -> None:
    assert faiss_index.plan_index(10_000, 512).kind == "flat"
    ivf = faiss_index.plan_index(100_000, 512)
    assert (ivf.kind, ivf.params["nlist"]) == ("ivf-flat", int(2 * np.sqrt(100_000)))
    pq = faiss_index.plan_index(1_000_000, 1024)
    assert (pq.kind, pq.params["m"], pq.params["nbits"]) == ("ivf-pq", 64, 8)
    assert faiss_index.plan_index(1_000_000, 1024, exact=True).kind == "flat"
    assert faiss_index.plan_index(20_000_000, 48).params["m"] == 6


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, limits", [("ivf-flat", {"FLAT_MAX": 500}), ("ivf-pq", {"FLAT_MAX": 500, "FLAT_BYTES_MAX": 1000})]
)
def test_approximate_index_records_the_recall_it_measured(tmp_path, monkeypatch, kind, limits) -> None:
    for attribute, value in limits.items():
        monkeypatch.setattr(faiss_index, attribute, value)
    videos = clustered_videos(2000, 32, seed=2)
    ws = fake_workspace(tmp_path, videos)
    summary = build_index(ws, "encodings:toy-k1-vlad")
    assert summary["kind"] == kind
    assert 1 <= summary["params"]["nprobe"] <= summary["params"]["nlist"] == int(2 * np.sqrt(2000))
    assert summary["recall_queries"] == faiss_index.RECALL_QUERIES
    index = Index.open(tmp_path, "fake", "toy-k1-vlad")
    rng = np.random.default_rng(3)
    found = []
    for vid in rng.choice(list(videos), size=50, replace=False):
        exact = set(numpy_ranking(videos, videos[vid][2])[0][:10])
        found.append(len(exact & {h.video_id for h in index.search(videos[vid][2], k=10)}) / 10)
    assert summary["expected_recall_at_10"] >= faiss_index.TARGET_RECALL
    assert np.mean(found) >= 0.9
    assert ("Refine(SQ8)" in summary["factory"]) == (kind == "ivf-pq")
    assert build_index(ws, "encodings:toy-k1-vlad", IndexOptions(exact=True, name="exact"))["kind"] == "flat"


# --- evaluation -----------------------------------------------------------------------------


def unit(degrees: float) -> np.ndarray:
    return np.array([np.cos(np.radians(degrees)), np.sin(np.radians(degrees))])


#: Train A at 0° and 90°, B at 30° and 180°; test A at 10°, B at 70°.
TINY_GALLERY = {
    "t0": (0, "train", unit(0)),
    "t1": (0, "train", 2 * unit(90)),
    "t2": (1, "train", unit(30)),
    "t3": (1, "train", 3 * unit(180)),
    "qa": (0, "test", unit(10)),
    "qb": (1, "test", unit(70)),
}


def test_recall_and_map_match_hand_computed_values(tmp_path: Path) -> None:
    # qa ranks t0(A) t2(B) t1(A) t3(B): AP = (1/1 + 2/3) / 2 = 5/6, hit at 1.
    # qb ranks t1(A) t2(B) t0(A) t3(B): AP = (1/2 + 2/4) / 2 = 1/2, first hit at 2.
    ws = fake_workspace(tmp_path, TINY_GALLERY)
    build_index(ws, "encodings:toy-k1-vlad", IndexOptions(centre=False))  # the angles above are the raw ones
    result = evaluate_index(Index.open(tmp_path, "fake", "toy-k1-vlad"))
    assert (result["queries"], result["gallery_videos"], result["ranking_depth"]) == (2, 4, 4)
    assert result["R@1"] == 0.5 and result["R@5"] == 1.0 and result["R@50"] == 1.0
    assert result["mAP"] == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert result["per_label"]["class0"] == {"queries": 1, "R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "R@20": 1.0,
                                             "R@50": 1.0, "mAP": pytest.approx(5 / 6)}  # fmt: skip
    assert result["per_label"]["class1"]["R@1"] == 0.0
    assert result["per_label"]["class1"]["mAP"] == pytest.approx(0.5)
    written = json.loads((ws.dir / "index" / "toy-k1-vlad-evaluation.json").read_text())
    assert written["mAP"] == pytest.approx(result["mAP"])


def test_metrics_count_a_label_absent_from_the_gallery_as_a_miss_without_ap() -> None:
    ranked = np.array([[1, 0, -1], [2, 2, 1]])
    result = retrieval_metrics(ranked, np.array([0, 3]), np.array([0, 1, 2, 2]), {0: "a", 3: "d"}, ks=(1, 2))
    # query 0: hit at rank 2 of its single relevant item -> AP 1/2; query 1: label 3 not in the gallery.
    assert (result["R@1"], result["R@2"], result["mAP"]) == (0.0, 0.5, 0.5)
    assert result["per_label"]["d"] == {"queries": 1, "R@1": 0.0, "R@2": 0.0, "mAP": None}


# --- resume and atomicity -------------------------------------------------------------------


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_rerun_skips_an_unchanged_embedding_and_rebuilds_a_changed_one(tmp_path: Path) -> None:
    videos = clustered_videos(60, 8)
    ws = fake_workspace(tmp_path, videos)
    assert build_index(ws, "encodings:toy-k1-vlad")["written"]
    before = snapshot(ws.dir / "index")
    assert not build_index(ws, "encodings:toy-k1-vlad")["written"]
    assert snapshot(ws.dir / "index") == before
    changed = {v: (label, split, -x) for v, (label, split, x) in videos.items()}
    write_encodings(ws, changed, fingerprint="enc-2")
    with pytest.raises(StageError, match="stale"):
        Index.open(tmp_path, "fake", "toy-k1-vlad").search("v00001")
    assert build_index(ws, "encodings:toy-k1-vlad")["written"]
    hits = Index.open(tmp_path, "fake", "toy-k1-vlad").search(videos["v00001"][2], k=3)
    assert [h.video_id for h in hits] == numpy_ranking(changed, videos["v00001"][2])[0][:3]


def test_a_failed_build_keeps_the_previous_index(tmp_path: Path, monkeypatch) -> None:
    videos = clustered_videos(60, 8)
    ws = fake_workspace(tmp_path, videos)
    build_index(ws, "encodings:toy-k1-vlad")
    before = snapshot(ws.dir / "index")
    write_encodings(ws, clustered_videos(60, 8, seed=5), fingerprint="enc-2")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(faiss_index, "tune_search", killed)
    with pytest.raises(KeyboardInterrupt):
        build_index(ws, "encodings:toy-k1-vlad")
    assert snapshot(ws.dir / "index") == before


def test_a_kill_between_the_two_renames_is_detected_and_rebuilt(tmp_path: Path, monkeypatch) -> None:
    ws = fake_workspace(tmp_path, clustered_videos(60, 8))
    build_index(ws, "encodings:toy-k1-vlad")
    write_encodings(ws, clustered_videos(60, 8, seed=5), fingerprint="enc-2")

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(store, "write_table", killed)
    with pytest.raises(KeyboardInterrupt):
        build_index(ws, "encodings:toy-k1-vlad")
    with pytest.raises(StageError, match="does not match its id map"):
        Index.open(tmp_path, "fake", "toy-k1-vlad")
    monkeypatch.undo()
    assert build_index(ws, "encodings:toy-k1-vlad")["written"]
    Index.open(tmp_path, "fake", "toy-k1-vlad")


# --- bad input ------------------------------------------------------------------------------


def one_line_error(result, exit_code: int, *needles: str) -> None:
    assert result.exit_code == exit_code, result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    for needle in needles:
        assert needle in result.output


def test_bad_input_says_what_and_where_and_rewrites_nothing(tmp_path: Path) -> None:
    ws = fake_workspace(tmp_path, clustered_videos(60, 8))
    base = ["--dataset", "fake", "--workspace", tmp_path]
    assert invoke("index", *base, "--embedding", "encodings:toy-k1-vlad").exit_code == 0
    before = snapshot(ws.dir)

    one_line_error(invoke("search", *base, "--index", "toy-k1-vlad", "--id", "nope/v9"), 1, "'nope/v9'")
    not_video = tmp_path / "notes.avi"
    not_video.write_text("not a video\n" * 20)
    one_line_error(invoke("search", *base, "--index", "toy-k1-vlad", "--video", not_video), 1, "notes.avi")
    one_line_error(
        invoke("search", *base, "--index", "toy-k1-vlad", "--embedding", "features:toy", "--id", "v00001"),
        1, "built from encodings:toy-k1-vlad, not features:toy",
    )  # fmt: skip
    one_line_error(
        invoke("index", *base, "--embedding", "features:toy", "--name", "toy-k1-vlad"),
        1, "built from encodings:toy-k1-vlad", "--name",
    )  # fmt: skip
    one_line_error(invoke("search", *base, "--index", "missing", "--id", "v00001"), 1, "no index 'missing'")
    one_line_error(invoke("index", *base, "--embedding", "bogus"), 1, "kind:name")
    assert snapshot(ws.dir) == before

    usage = invoke("search", *base, "--index", "toy-k1-vlad")
    assert usage.exit_code == 2 and "exactly one of --id" in usage.output
    assert invoke("search", *base, "--index", "toy-k1-vlad", "--id", "v00001", "-k", "0").exit_code == 2

    faiss_file = ws.dir / "index" / "toy-k1-vlad.faiss"
    faiss_file.write_bytes(faiss_file.read_bytes()[:100])
    truncated = snapshot(ws.dir)
    searched = invoke("search", *base, "--index", "toy-k1-vlad", "--id", "v00001")
    one_line_error(searched, 1, "truncated", "toy-k1-vlad.faiss")
    assert snapshot(ws.dir) == truncated


def test_clip_hits_need_a_clip_level_index(tmp_path: Path) -> None:
    ws = fake_workspace(tmp_path, clustered_videos(20, 8))
    build_index(ws, "encodings:toy-k1-vlad")
    with pytest.raises(ConfigError, match="--clips"):
        Index.open(tmp_path, "fake", "toy-k1-vlad").search("v00001", clips=True)
    with pytest.raises(ConfigError, match="features: embedding"):
        build_index(ws, "encodings:toy-k1-vlad", IndexOptions(clips=True))


# --- new videos, through the real chain -----------------------------------------------------

NEED, FPS = 8, 25


def textured_frames(num_frames: int, label: int, seed: int) -> np.ndarray:
    """A random texture sliding left at a class-dependent speed, on a class-dependent background."""
    rng = np.random.default_rng(seed)
    frames = np.full((num_frames, 48, 64, 3), 30 + 60 * label, np.uint8)
    texture = rng.integers(0, 255, (32, 160, 3), dtype=np.uint8)
    for t in range(num_frames):
        shift = t * (2 + 3 * label) % 96
        frames[t, 8:40] = texture[:, shift : shift + 64]
    return frames


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> DatasetWorkspace:
    """Ten videos of two classes, probed, planned (li3d, two clips each) and LI3D-extracted,
    plus a K=2 codebook and the VLAD encodings it gives (written here, the encode stage's job
    being tested elsewhere)."""
    return build_cache(tmp_path_factory.mktemp("retrieval"), sampler_config("li3d", need=NEED, clips=2, size=32, short_side=48))


@pytest.fixture(scope="module")
def random_cache(tmp_path_factory) -> DatasetWorkspace:
    """The same videos under non-default sampler options whose plan is random per video: one
    li3d window (its start drawn from the video's id), key-frame scaling, another seed."""
    plan = sampler_config("li3d", need=NEED, clips=1, size=32, short_side=40, view0="scale", seed=5)
    return build_cache(tmp_path_factory.mktemp("random-plan"), plan)


def build_cache(tmp: Path, plan) -> DatasetWorkspace:
    root = tmp / "clips"
    for label in range(2):
        for k in range(5):
            write_video(root / f"c{label}" / f"v{k}.avi", textured_frames(12 + 2 * k, label, 10 * label + k), fps=FPS)
    ws = DatasetWorkspace(tmp / "ws", "clips")
    config = configure_dataset(ws, adapter="folder", root=root)
    executor = InProcessExecutor()
    run_stage(ProbeStage(ws, config), executor, progress=False)
    run_stage(PlanStage(ws, plan), executor, progress=False)
    extract = ExtractStage(ws, backbone="li3d", stream="rgb", plan="li3d", device="cpu")
    report = run_stage(extract, executor, progress=False)
    assert report.failed == 0
    with ws.open_features("li3d-rgb") as features:
        videos = ws.usable_videos([features.index])[0]
        sequences = {v: features.sequence(v).astype(np.float32) for v in videos["video_id"]}
    first = sequences["c0/v0"]
    book = Codebook(
        centroids=first[[0, -1]], gmm_weights=np.full(2, 0.5), gmm_means=first[[0, -1]],
        gmm_variances=np.ones((2, first.shape[1])), provenance={"fingerprint": "cb-1"},
    )  # fmt: skip
    save_codebook(ws.codebook_path("li3d-rgb", 2), book)
    provenance = {"method": "vlad", "features": "li3d-rgb", "layer": "pool", "clusters": 2}
    provenance["codebook_fingerprint"] = "cb-1"
    path = ws.encoding_path("li3d-rgb", 2, "vlad")
    with EncodingWriter(path, videos, 2 * first.shape[1], fingerprint="enc-1", provenance=provenance) as writer:
        for row, video_id in enumerate(videos["video_id"]):
            writer.write(row, encode_vlad(sequences[video_id], book))
    return ws


@pytest.mark.slow
@pytest.mark.parametrize("embedding", ["features:li3d-rgb", "encodings:li3d-rgb-k2-vlad"])
def test_a_copy_of_a_dataset_video_finds_the_original_first(cache, tmp_path, embedding) -> None:
    summary = build_index(cache, embedding)
    copy = tmp_path / "renamed copy.avi"
    shutil.copy(Path(cache.read_manifest().set_index("video_id").loc["c1/v3", "path"]), copy)
    before = snapshot(cache.dir)
    result = invoke("search", "--dataset", "clips", "--workspace", cache.root, "--index", summary["name"],
                    "--video", copy, "-k", "4", "--json", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert hits[0]["video_id"] == "c1/v3" and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert hits[1]["score"] < hits[0]["score"] - 1e-4
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert snapshot(cache.dir) == before


@pytest.mark.slow
def test_clip_hits_carry_their_time_span(cache, tmp_path) -> None:
    summary = build_index(cache, "features:li3d-rgb", IndexOptions(clips=True, centre=False))
    assert (summary["name"], summary["level"], summary["count"]) == ("li3d-rgb-pool-mean-clips", "clip", 20)
    index = Index.open(cache.root, "clips", summary["name"])
    manifest = cache.read_manifest().set_index("video_id")
    copy = tmp_path / "copy.avi"
    shutil.copy(manifest.loc["c0/v4", "path"], copy)
    hits = index.search_video(copy, k=6, clips=True, device="cpu")
    with FeatureSet.open(cache.features_dir("li3d-rgb")) as features:
        clips = features.clips("c0/v4", layer="pool").astype(np.float64)
    query = clips.mean(axis=(0, 1))
    for hit in hits:
        with FeatureSet.open(cache.features_dir("li3d-rgb")) as features:
            row = features.clips(hit.video_id, layer="pool")[hit.clip].astype(np.float64).mean(axis=0)
        assert hit.score == pytest.approx(row @ query / np.linalg.norm(row) / np.linalg.norm(query), abs=1e-4)
        frames = int(manifest.loc[hit.video_id, "num_frames"])
        begin = 0 if hit.clip == 0 else frames - NEED  # li3d with two clips: first and last window
        assert (hit.start_s, hit.end_s) == pytest.approx((begin / FPS, (begin + NEED) / FPS))
    assert hits[0].video_id == "c0/v4"
    videos = index.search_video(copy, k=3, device="cpu")
    assert len({h.video_id for h in videos}) == 3 and videos[0].video_id == "c0/v4" and videos[0].clip == -1


@pytest.mark.slow
def test_a_flow_stream_query_computes_its_flow_with_the_recorded_settings(cache, tmp_path) -> None:
    fast = {"nscales": 1, "warps": 1, "inner_iterations": 5, "outer_iterations": 1}
    executor = InProcessExecutor()
    assert run_stage(FlowStage(cache, plan="li3d", tvl1_params=fast, device="cpu"), executor, progress=False).failed == 0
    extract = ExtractStage(cache, backbone="li3d", stream="flow", plan="li3d", device="cpu")
    assert run_stage(extract, executor, progress=False).failed == 0
    summary = build_index(cache, "features:li3d-flow")
    assert summary["provenance"]["features"]["flow"]["tvl1_params"] == fast
    copy = tmp_path / "copy.avi"
    shutil.copy(cache.read_manifest().set_index("video_id").loc["c0/v3", "path"], copy)
    hits = Index.open(cache.root, "clips", summary["name"]).search_video(copy, k=2, device="cpu")
    assert hits[0].video_id == "c0/v3" and hits[0].score == pytest.approx(1.0, abs=1e-5)


# --- run: embeddings ------------------------------------------------------------------------


def _run_api_available() -> bool:
    try:
        from vpipe.train import TrainConfig, embed_clip_arrays, embed_videos, train  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _run_api_available(), reason="vpipe.train has no embed_videos / embed_clip_arrays yet")
def test_a_trained_runs_embedding_finds_the_original_of_a_copy(cache, tmp_path) -> None:
    from vpipe.train import TrainConfig, embed_videos, train

    config = TrainConfig(
        features=("li3d-rgb",), head_options={"temporal": "none", "aggregation": "avg"}, max_epochs=1,
        batch_size=4, val_fraction=0.25, device="cpu",
    )  # fmt: skip
    run_id = train(cache, config).run_id
    summary = build_index(cache, f"run:{run_id}")
    assert (summary["count"], summary["written"]) == (10, True)
    assert not build_index(cache, f"run:{run_id}")["written"]
    index = Index.open(cache.root, "clips", summary["name"])
    gallery = embed_videos(cache, run_id, index.rows["video_id"].tolist(), device="cpu").astype(np.float64)
    as_videos = {v: (0, "train", x) for v, x in zip(index.rows["video_id"], gallery)}
    for video_id in ["c0/v2", "c1/v4"]:
        ids, cos = numpy_ranking(as_videos, as_videos[video_id][2])
        assert ids[0] == video_id
        hits = index.search(video_id, k=3, device="cpu")
        assert [h.video_id for h in hits] == ids[1:4]
        np.testing.assert_allclose([h.score for h in hits], cos[1:4], atol=1e-5)
    copy = tmp_path / "copy.avi"
    shutil.copy(cache.read_manifest().set_index("video_id").loc["c1/v1", "path"], copy)
    hits = index.search_video(copy, k=3, device="cpu")
    assert hits[0].video_id == "c1/v1" and hits[0].score == pytest.approx(1.0, abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("embedding", ["features:li3d-rgb", "encodings:li3d-rgb-k2-vlad", "run"])
def test_an_identical_file_under_another_name_reproduces_its_stored_vector(random_cache, tmp_path, embedding) -> None:
    ws = random_cache
    if embedding == "run":
        if not _run_api_available():
            pytest.skip("vpipe.train has no embed_videos / embed_clip_arrays yet")
        from vpipe.train import TrainConfig, train

        config = TrainConfig(
            features=("li3d-rgb",), head_options={"temporal": "none", "aggregation": "avg"}, max_epochs=1,
            batch_size=4, val_fraction=0.25, device="cpu",
        )  # fmt: skip
        embedding = f"run:{train(ws, config).run_id}"
    summary = build_index(ws, embedding)
    index = Index.open(ws.root, "clips", summary["name"])
    manifest = ws.read_manifest().set_index("video_id")
    windows = {}
    for video_id in ["c0/v4", "c1/v2"]:
        copy = tmp_path / f"query of {video_id.replace('/', '-')}.avi"
        shutil.copy(manifest.loc[video_id, "path"], copy)
        stored = index.vectors_of([video_id], device="cpu")[0].astype(np.float64)
        with query_video(copy, device="cpu") as query, ws.open_features("li3d-rgb") as features:
            recorded = FeatureProvenance.from_dict(features.provenance)
            windows[video_id] = query.job(recorded).clips[0].frames  # planned under its file name
        hits = index.search_video(copy, k=len(index.rows), device="cpu")
        assert hits[0].video_id == video_id, [(h.video_id, h.score) for h in hits[:3]]
        vector = next(h for h in hits if h.video_id == video_id)
        assert vector.score >= 0.9999
        assert all(h.score < vector.score for h in hits[1:])
        assert stored @ stored == pytest.approx(1.0, abs=1e-5)
    plans = pd.read_parquet(ws.plan_path("li3d"))
    # what makes the case hard: planned under its own file name, a copy gets another window
    assert any(
        tuple(plans[(plans.video_id == v) & (plans.view == 0)].frames.iloc[0]) != tuple(w) for v, w in windows.items()
    )


def test_a_gallery_twin_is_the_video_with_the_same_bytes_not_the_same_size(tmp_path: Path) -> None:
    from vpipe.retrieval.query_video import gallery_twin

    files = {name: tmp_path / f"{name}.avi" for name in ("a", "b", "c")}
    files["a"].write_bytes(b"x" * 100)
    files["b"].write_bytes(b"y" * 100)  # same size, other bytes
    files["c"].write_bytes(b"x" * 100)
    rows = pd.DataFrame({"video_id": ["a", "b"], "split": ["train", "test"], "path": [str(files["a"]), str(files["b"])],
                         "width": [64, 64], "height": [48, 48]})  # fmt: skip
    query = tmp_path / "renamed.avi"
    shutil.copy(files["b"], query)
    assert gallery_twin(rows, query, (64, 48)) == ("b", "test")
    assert gallery_twin(rows, query, (32, 48)) is None  # another frame size is never hashed
    assert gallery_twin(rows.iloc[:1], query) is None
    assert gallery_twin(rows.assign(path=str(tmp_path / "gone.avi")), query) is None


# --- export ---------------------------------------------------------------------------------


def test_export_round_trips_ids_vectors_and_provenance(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vpipe.retrieval.export import read_export_metadata

    videos = clustered_videos(90, 12, seed=6)
    fake_workspace(tmp_path, videos)
    out = tmp_path / "out" / "toy.parquet"
    result = invoke("export", "--dataset", "fake", "--workspace", tmp_path, "--embedding", "encodings:toy-k1-vlad",
                    "--output", out, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["dim"], summary["level"]) == (90, 12, "video")
    table = pq.read_table(out)
    vector_type = table.schema.field("vector").type
    assert (vector_type.list_size, vector_type.value_type) == (12, pa.float32())
    assert table.column("video_id").to_pylist() == list(videos)
    assert table.column("label").to_pylist() == [label for label, _, _ in videos.values()]
    assert table.column("split").to_pylist() == [split for _, split, _ in videos.values()]
    assert table.column("start_s").null_count == 90
    vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
    x = np.stack([v for _, _, v in videos.values()])
    np.testing.assert_allclose(vectors, x / np.linalg.norm(x, axis=1, keepdims=True), atol=1e-6)
    metadata = read_export_metadata(out)
    assert metadata["embedding"] == "encodings:toy-k1-vlad" and metadata["provenance"]["encoding"]["method"] == "vlad"
    assert not list(out.parent.glob(".*tmp"))
    base = ["export", "--dataset", "fake", "--workspace", tmp_path, "--embedding", "encodings:toy-k1-vlad"]
    one_line_error(invoke(*base, "--output", tmp_path / "toy.csv"), 1, "toy.csv")
    one_line_error(invoke(*base, "--output", tmp_path / "clips.parquet", "--clips"), 1, "clip-level")
    assert invoke(*base, "-o", out).exit_code == 2  # -o is --option everywhere; the path is --output


def test_export_memory_stays_flat_with_gallery_size(tmp_path: Path) -> None:
    import tracemalloc

    import pyarrow.parquet as pq

    from vpipe.retrieval.export import export_embedding

    peaks = {}
    for n in (1000, 8000):
        ws = fake_workspace(tmp_path / str(n), clustered_videos(n, 1024, seed=n))
        tracemalloc.start()
        export_embedding(ws, "encodings:toy-k1-vlad", tmp_path / f"{n}.parquet", batch_rows=500)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert pq.ParquetFile(tmp_path / f"{n}.parquet").metadata.num_row_groups == n // 500
    # 8x the rows: holding the vectors would add 7000 x 1024 x 4 B = 29 MB; what grows is
    # the id map (under 1 kB a row), not the vectors.
    assert peaks[8000] - peaks[1000] < 7000 * 1024 * 4 * 0.35, peaks


@pytest.mark.slow
def test_report_examples_show_decoded_strips_of_queries_and_hits(cache) -> None:
    import base64
    import io
    from html.parser import HTMLParser

    import cv2
    from PIL import Image

    from vpipe.report.strips import STRIP_FRAMES, THUMB_HEIGHT, retrieval_examples_html

    summary = build_index(cache, "encodings:li3d-rgb-k2-vlad", IndexOptions(name="strips"))
    images: list[tuple[str, str]] = []

    class Page(HTMLParser):
        def handle_starttag(self, tag, attrs):
            if tag == "img":
                images.append((dict(attrs)["src"], dict(attrs)["alt"]))

    text = retrieval_examples_html(cache, [summary["name"]], device="cpu")
    Page().feed(text)
    videos = Index.open(cache, name="strips").rows.drop_duplicates("video_id")
    queries, gallery = min(3, (videos["split"] == "test").sum()), (videos["split"] == "train").sum()
    assert len(images) == queries * (1 + min(5, gallery)) and queries > 0
    manifest = cache.read_manifest().set_index("video_id")
    for src, alt in images:
        assert src.startswith("data:image/png;base64,")
        strip = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).convert("RGB"))
        assert strip.shape[0] == THUMB_HEIGHT and strip.std() > 0
        # the first thumbnail is the frame at the centre of the first quarter (OpenCV reference)
        row = manifest.loc[alt.rsplit(" · ", 1)[1]]
        width = strip.shape[1] // STRIP_FRAMES
        capture = cv2.VideoCapture(str(row["path"]))
        capture.set(cv2.CAP_PROP_POS_FRAMES, int(0.5 * row["num_frames"] / STRIP_FRAMES))
        ok, frame = capture.read()
        capture.release()
        assert ok
        expected = cv2.resize(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), (width, THUMB_HEIGHT), interpolation=cv2.INTER_AREA)
        assert np.abs(strip[:, :width].astype(float) - expected).mean() < 12
    assert text.count("<figcaption>query · ") == queries and "<figcaption>#1 · " in text


def test_report_examples_survive_a_missing_video(tmp_path) -> None:
    from vpipe.report.strips import _figure

    figure = _figure(str(tmp_path / "gone.mp4"), 10, "query · a · gone")
    assert "frames unavailable" in figure and "<img" not in figure
