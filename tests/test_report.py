"""Run reports: figures per run and a comparison table in the papers' ablation layout."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from typer.testing import CliRunner

from tests.fake_cache import make_workspace
from tests.test_train import cfg
from vpipe.artifacts.run_record import RunRecord
from vpipe.cli.train_cmd import register
from vpipe.errors import StageError
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.report import build_report
from vpipe.report.tables import human_count, markdown_table
from vpipe.train import runs, train
from vpipe.report.classes import per_class_accuracy, top_confusions

RUNS = ("bilstm-concat", "none-avg")


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> DatasetWorkspace:
    """A workspace with two short runs, the BiLSTM and the order-less baseline."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    ws = make_workspace(tmp_path_factory.mktemp("report"))
    for run_id in RUNS:
        temporal, aggregation = run_id.split("-")
        config = cfg(temporal=temporal, aggregation=aggregation, max_epochs=6)
        train(ws, config, run_id=run_id)
    torch.set_num_threads(before)
    return ws


def _table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| ") and not line.startswith("| Run ")]


def test_report_draws_every_figure_and_one_row_per_run(ws, monkeypatch):
    reads = []
    read = RunRecord.from_directory.__func__
    monkeypatch.setattr(RunRecord, "from_directory", classmethod(lambda cls, d: reads.append(Path(d).name) or read(cls, d)))
    result = build_report(ws, device="cpu")
    assert sorted(reads) == sorted(RUNS), "the report reads each run once and hands the record on"
    for run_id in RUNS:
        plots = ws.dir / "runs" / run_id / "plots"
        for name in ("curves.png", "confusion.png", "tsne.png"):
            path = plots / name
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000, path
    text = (ws.dir / "report.md").read_text()
    rows = _table_rows(text)
    assert [row.split(" | ")[0] for row in rows] == [f"| {run_id}" for run_id in RUNS]
    assert "| Run | Head | Inputs | Settings | Accuracy | Precision | Recall | Top-5 | Params |" in text
    assert "![tsne](runs/bilstm-concat/plots/tsne.png)" in text
    assert [row["run"] for row in result["runs"]] == list(RUNS)
    assert result["runs"][0]["settings"] == "aggregation=concat clusters=4 hidden=16 dropout=0.1"
    assert result["runs"][1]["settings"] == "temporal=none aggregation=avg clusters=4 hidden=16 dropout=0.1"


def test_report_of_chosen_runs_only(ws):
    result = build_report(ws, ["none-avg"], tsne=False)
    assert len(_table_rows(result["table"])) == 1
    assert [Path(p).name for p in result["plots"]["none-avg"]] == ["curves.png", "confusion.png"]


def test_report_errors_name_the_fix(ws, tmp_path):
    with pytest.raises(StageError, match="completed runs: bilstm-concat, none-avg"):
        build_report(ws, ["missing"])
    empty = DatasetWorkspace(tmp_path, "empty")
    with pytest.raises(StageError, match="vpipe train --dataset empty"):
        build_report(empty)


def test_cli_report_json(ws):
    app = typer.Typer()
    register(app)
    args = ["--dataset", ws.dataset, "--workspace", str(ws.root), "--runs", "bilstm-concat", "--no-tsne", "--json"]
    result = CliRunner().invoke(app, ["report", *args])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["report"] == str(ws.dir / "report.md")
    assert [row["run"] for row in data["runs"]] == ["bilstm-concat"]


def test_markdown_table_formats_like_the_papers():
    row = {
        "run": "r", "head": "bilstm-softagg", "inputs": "li3d-rgb + li3d-flow (late)", "settings": "clusters=128",
        "accuracy": 0.9, "macro_precision": 0.91, "macro_recall": 0.9, "top5": 0.99, "parameters": 8_160_000,
        "test_ms_per_video": 1.624,
    }  # fmt: skip
    lines = markdown_table([row]).splitlines()
    assert lines[1].startswith("|---|---|---|---|---:|")
    assert lines[2] == "| r | bilstm-softagg | li3d-rgb + li3d-flow (late) | clusters=128 | 0.900 | 0.910 | 0.900 | 0.990 | 8.16M | 1.62 |"
    assert [human_count(n) for n in (999, 1_500, 12_280_000)] == ["999", "1.5K", "12.28M"]


def _page(path: Path) -> dict[str, list]:
    from html.parser import HTMLParser

    found: dict[str, list] = {"img": [], "links": [], "rows": [], "script": [], "tables": [], "text": []}

    class Page(HTMLParser):
        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "img":
                found["img"].append(attrs.get("src", ""))
            if tag in ("link", "a", "script", "iframe") or "href" in attrs:
                found["links"].append((tag, attrs))
            if tag == "table":
                found["tables"].append([])
            if tag == "tr":
                found["rows"].append(tag)
                found["tables"][-1].append([])

        def handle_data(self, data):
            found["text"].append(data)
            if self.lasttag in ("td", "th") and found["tables"] and found["tables"][-1] and data.strip():
                found["tables"][-1][-1].append(data.strip())

    Page().feed(path.read_text())
    return found


def test_html_report_is_one_self_contained_page(ws):
    import base64
    import io

    import matplotlib.image as mpimg

    result = build_report(ws, device="cpu")
    path = Path(result["html"])
    assert path == ws.dir / "report.html"
    page = _page(path)
    assert page["links"] == []  # no scripts, style sheets, fonts or links to fetch
    assert len(page["img"]) == 3 * len(RUNS)
    for src in page["img"]:
        assert src.startswith("data:image/png;base64,")
        image = mpimg.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert image.shape[0] > 100 and image.std() > 0
    results = page["tables"][0]
    assert len(results) == 1 + len(RUNS) and [row[0] for row in results[1:]] == list(RUNS)
    text = path.read_text()
    assert "No failed items." in text
    per_class = [t for t in page["tables"] if t[0] == ["class", "accuracy", "correct", "videos"]]
    assert len(per_class) == len(RUNS)
    for run_id, table in zip(RUNS, per_class):
        run = runs.load_run(ws, run_id)
        matrix = np.asarray(run.metrics["confusion"])
        names = run.config.class_names
        # every class once, worst first, with the diagonal over the row sum (numpy reference)
        assert sorted(row[0] for row in table[1:]) == sorted(names)
        assert [float(row[1]) for row in table[1:]] == sorted(float(row[1]) for row in table[1:])
        for name, accuracy, correct, videos in table[1:]:
            i = names.index(name)
            assert int(correct) == matrix[i, i] and int(videos) == matrix[i].sum()
            assert float(accuracy) == pytest.approx(matrix[i, i] / matrix[i].sum(), abs=5e-4)
    assert all(run_id in text for run_id in RUNS) and "<!DOCTYPE html>" in text and "@media print" in text


@pytest.mark.skipif(
    not any(shutil.which(name) for name in ("chromium", "chromium-browser")), reason="no Chromium installed"
)
def test_html_report_renders_in_a_headless_browser(ws, tmp_path):
    import matplotlib.image as mpimg

    browser = next(shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n))
    page = Path(build_report(ws, tsne=False)["html"])
    shot = tmp_path / "page.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                    "--window-size=1280,1600", page.as_uri()], check=True, capture_output=True, timeout=120)  # fmt: skip
    image = mpimg.imread(shot)
    assert image.std() > 0.01  # not blank


def test_per_class_accuracy_and_top_confusions_against_a_hand_count():
    names = ["a", "b", "c", "d"]
    matrix = np.array([[5, 3, 0, 0], [0, 4, 0, 0], [1, 0, 1, 2], [0, 0, 0, 0]])
    rows = per_class_accuracy(matrix, names)
    assert [(r["class"], r["correct"], r["videos"]) for r in rows] == [("c", 1, 4), ("a", 5, 8), ("b", 4, 4)]
    assert [r["accuracy"] for r in rows] == [0.25, 0.625, 1.0]
    confusions = top_confusions(matrix, names, k=2)
    assert [(c["true"], c["predicted"], c["videos"]) for c in confusions] == [("a", "b", 3), ("c", "d", 2)]
    assert confusions[0]["share"] == 3 / 8 and confusions[1]["share"] == 0.5


def test_html_report_lists_failures_by_stage(ws):
    from vpipe.pipeline.failures import read_failures, replace_stage_failures

    before = read_failures(ws.failures_path)
    failed = [{"stage": "decode", "video_id": f"v{i:02d}", "path": f"/data/v{i:02d}.mp4",
               "error": "moov atom not found", "time": 0.0} for i in range(12)]  # fmt: skip
    try:
        replace_stage_failures(ws.failures_path, "decode", failed)
        page = _page(Path(build_report(ws, tsne=False)["html"]))
    finally:
        replace_stage_failures(ws.failures_path, "decode", [])
    tables = page["tables"]
    summary = next(t for t in tables if t[0] == ["stage", "failed items"])
    assert ["decode", "12"] in summary[1:]
    listed = next(t for t in tables if t[0] == ["video", "path", "error"])
    assert [row[0] for row in listed[1:]] == [f"v{i:02d}" for i in range(10)]
    assert listed[1][2] == "moov atom not found"
    assert "… and 2 more." in "".join(page["text"])
    assert len(read_failures(ws.failures_path)) == len(before)


def test_html_report_at_101_classes_stays_legible_and_quick(ws):
    import time

    from bench.report_build import widen_run

    run_id = widen_run(ws, "bilstm-concat", "wide-101")
    try:
        start = time.perf_counter()
        result = build_report(ws, [run_id], tsne=False, device="cpu")
        elapsed = time.perf_counter() - start
        page = _page(Path(result["html"]))
        matrix = np.asarray(runs.load_run(ws, run_id).metrics["confusion"])
    finally:
        shutil.rmtree(ws.dir / "runs" / run_id)
    per_class = next(t for t in page["tables"] if t[0] == ["class", "accuracy", "correct", "videos"])
    assert len(per_class) == 1 + 101
    confusions = next(t for t in page["tables"] if t[0] == ["true class", "predicted as", "videos", "share of true class"])
    off = matrix - np.diag(np.diag(matrix))
    assert len(confusions) == 1 + 20
    assert [int(row[2]) for row in confusions[1:]] == sorted(off.ravel(), reverse=True)[:20]
    assert elapsed < 60  # the report goal of BENCHMARKS.md, with a wide margin on a shared machine


def test_cluster_order_puts_mutually_confused_classes_together():
    """A shuffled block-diagonal confusion comes back with every block contiguous."""
    from vpipe.report.confusion_map import cluster_order

    rng = np.random.default_rng(0)
    blocks = np.repeat(np.arange(6), 4)  # six groups of four classes
    labels = rng.permutation(len(blocks))
    group = blocks[np.argsort(labels)]  # group of each class after shuffling the label order
    same = group[:, None] == group[None, :]
    matrix = np.where(same, rng.integers(1, 5, same.shape), 0) + np.diag(np.full(len(group), 30))
    order = cluster_order(matrix)
    assert sorted(order) == list(range(len(group)))
    position = np.argsort(order)
    for g in range(6):
        spots = np.sort(position[group == g])
        assert spots[-1] - spots[0] == 3, (g, spots)


def test_html_report_at_400_classes_is_a_clustered_svg_named_on_hover(ws):
    import re
    import xml.etree.ElementTree as ET

    from bench.report_build import confusion_groups, widen_run

    run_id = widen_run(ws, "bilstm-concat", "wide-400", classes=400)
    try:
        result = build_report(ws, [run_id], tsne=False, device="cpu")
        text = Path(result["html"]).read_text()
        page = _page(Path(result["html"]))
        run = runs.load_run(ws, run_id)
        matrix, names = np.asarray(run.metrics["confusion"]), run.config.class_names
        assert any(Path(p).name == "confusion.png" and Path(p).is_file() for p in result["plots"][run_id])
    finally:
        shutil.rmtree(ws.dir / "runs" / run_id)
    assert len(page["img"]) == 1  # the curves; the matrix is vector, inline
    assert page["links"] == []
    (svg_text,) = re.findall(r'<svg xmlns="http://www.w3.org/2000/svg" class="confusion".*?</svg>', text, re.S)
    svg = ET.fromstring(svg_text)
    ns = "{http://www.w3.org/2000/svg}"
    cells = [r for r in svg.iter(f"{ns}rect") if r.find(f"{ns}title") is not None]
    assert len(cells) == np.count_nonzero(matrix)  # every non-empty cell, no other
    rows = [t.text for t in svg.iter(f"{ns}text") if t.get("text-anchor") == "end"]
    assert sorted(rows) == sorted(names)  # every class named once per axis
    position = {name: k for k, name in enumerate(rows)}
    for cell in cells[:50]:  # each tooltip names its classes and counts, checked against the matrix
        true, rest = cell.find(f"{ns}title").text.split(" → ")
        predicted, counts = rest.split(": ")
        count, support = counts.split(" (")[0].split(" of ")
        i, j = names.index(true), names.index(predicted)
        assert int(count) == matrix[i, j] and int(support) == matrix[i].sum()
        assert float(cell.get("x")) < float(svg.get("viewBox").split()[2])
    # the hidden groups of five that confuse each other end up side by side
    groups = confusion_groups(400)
    spans = [np.ptp([position[names[c]] for c in np.flatnonzero(groups == g)]) for g in range(80)]
    label_spans = [np.ptp(np.flatnonzero(groups == g)) for g in range(80)]
    assert sum(span == 4 for span in spans) >= 76 and np.median(label_spans) > 100
    per_class = next(t for t in page["tables"] if t[0] == ["class", "accuracy", "correct", "videos"])
    assert len(per_class) == 1 + 400


def test_a_run_whose_features_changed_layout_is_reported_without_tsne(tmp_path, monkeypatch, caplog):
    """Features re-extracted with another width (a backbone version that adds a block): the
    stale run keeps its table row and training figures, its t-SNE is skipped with a
    warning, and loading it says to retrain instead of failing inside the model."""
    import tests.fake_cache as fake_cache
    from vpipe.train.evaluation import load

    torch.set_num_threads(1)
    ws = make_workspace(tmp_path)
    train(ws, cfg(temporal="none", aggregation="avg", max_epochs=2), run_id="old")
    shutil.rmtree(ws.features_dir(fake_cache.FEATURES))
    monkeypatch.setattr(fake_cache, "D", fake_cache.D + 8)
    make_workspace(tmp_path)
    with pytest.raises(StageError, match=r"run 'old' was trained on inputs of shape .*32.*now give .*40.*train the run again"):
        load(ws, runs.load_run(ws, "old"), device="cpu")
    result = build_report(ws, device="cpu")
    assert [Path(p).name for p in result["plots"]["old"]] == ["curves.png", "confusion.png"]
    assert "no t-SNE for run old" in caplog.text
