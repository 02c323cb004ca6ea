"""``vpipe report``: figures for each run and one table comparing them.

For every chosen run the figures of :mod:`vpipe.report.plots` go to
``runs/<id>/plots/``; the comparison table of :mod:`vpipe.report.tables` goes to
``workspace/<ds>/report.md`` together with links to those figures. Everything is
redrawn on each call: figures are cheap next to training, and a report never mixes
figures of different runs under one name.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from vpipe.errors import StageError
from vpipe.artifacts import atomic_write_text
from vpipe.artifacts.run_record import RunRecord
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.report.html import write_html
from vpipe.report.plots import plot_confusion, plot_history, plot_tsne
from vpipe.report.tables import markdown_table, run_row
from vpipe.train import runs
from vpipe.train.evaluation import LoadedRun, load
from vpipe.train.scoring import predict
from vpipe.train.trainer import best_epoch

log = logging.getLogger(__name__)

#: t-SNE is quadratic in the number of points and embeddings can be 10⁵-dimensional,
#: so at most this many test videos (a seeded random subset) are embedded.
MAX_TSNE_VIDEOS = 500


def _tsne_inputs(loaded: LoadedRun, max_videos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(raw input, head embedding, label) of up to ``max_videos`` test videos.

    The raw input is the mean of the run's first input over its entries, averaged over
    every axis but the channels, so grids and stage maps come out as one vector per video.
    """
    videos = loaded.run.config.test_videos
    if len(videos) > max_videos:
        rng = np.random.default_rng(loaded.config.seed)
        videos = [videos[i] for i in sorted(rng.choice(len(videos), max_videos, replace=False))]
    scores = predict(loaded.model, loaded.loader(videos, loaded.labels), loaded.device, loaded.dtype, embeddings=True)
    role = loaded.reader.inputs[0].role
    before = []
    for video in videos:
        entries = loaded.reader.read(video, 0)[role].astype(np.float32)
        before.append(entries.reshape(len(entries), entries.shape[1] if entries.ndim > 1 else 1, -1).mean(axis=(0, 2)))
    return np.stack(before), scores.embeddings, scores.labels


def plot_run(ws: DatasetWorkspace, run: RunRecord, *, tsne: bool = True, device: str = "auto") -> list[Path]:
    """Draw the figures of one completed run; return their paths. A run that cannot read its
    features any more (re-extracted with another layout) gets no t-SNE, with a warning."""
    run_id = run.run_id
    out = run.directory / runs.PLOTS_DIR
    history = run.history
    class_names = run.config.class_names
    paths = [
        plot_history(history, best_epoch(history), out / "curves.png", f"{run_id}: training"),
        plot_confusion(
            np.asarray(run.metrics["confusion"]),
            class_names,
            out / "confusion.png",
            f"{run_id}: test accuracy {run.metrics['accuracy']:.3f}",
        ),
    ]
    if tsne and run.metrics["videos"] >= 4:
        try:
            loaded = load(ws, run, device=device)
        except StageError as exc:
            log.warning("no t-SNE for run %s: %s", run_id, exc)
            return paths
        try:
            before, after, labels = _tsne_inputs(loaded, MAX_TSNE_VIDEOS)
        finally:
            loaded.close()
        title = f"{run_id}: t-SNE of {len(labels)} test videos"
        paths.append(plot_tsne(before, after, labels, class_names, out / "tsne.png", title, seed=loaded.config.seed))
    return paths


def _markdown(ws: DatasetWorkspace, table: str, plots: dict[str, list[Path]]) -> str:
    lines = [
        f"# {ws.dataset}: trained heads",
        "",
        "Test-split metrics of each run (macro precision and recall over classes; "
        "parameters of the head; model time per test video, cached features given).",
        "",
        table,
        "",
    ]
    for run_id, paths in plots.items():
        lines += [f"## {run_id}", ""]
        lines += [f"![{p.stem}]({p.relative_to(ws.dir).as_posix()})" for p in paths]
        lines.append("")
    return "\n".join(lines)


def build_report(
    ws: DatasetWorkspace, run_ids: list[str] | None = None, *, tsne: bool = True, device: str = "auto"
) -> dict[str, Any]:
    """Plot ``run_ids`` (default: every completed run) and write ``report.md`` and ``report.html``.

    Returns the table rows, the figure paths per run, the report's path and its text.
    """
    chosen = run_ids if run_ids else runs.completed_runs(ws)
    if not chosen:
        raise StageError(
            f"dataset {ws.dataset!r} has no completed runs to report: "
            f"train one with `vpipe train --dataset {ws.dataset}`"
        )
    stored = [runs.load_run(ws, run_id) for run_id in chosen]
    plots = {run.run_id: plot_run(ws, run, tsne=tsne, device=device) for run in stored}
    rows = [run_row(run) for run in stored]
    table = markdown_table(rows)
    text = _markdown(ws, table, plots)
    path = ws.report_path
    atomic_write_text(path, text)
    page = write_html(ws, rows, plots, stored, device=device)
    return {
        "report": str(path),
        "html": str(page),
        "table": table,
        "runs": rows,
        "plots": {run_id: [str(p) for p in paths] for run_id, paths in plots.items()},
    }
