"""``vpipe report``: figures for each run and one table comparing them.

For every chosen run the figures of :mod:`vpipe.report.plots` go to
``runs/<id>/plots/``; the comparison table of :mod:`vpipe.report.tables` goes to
``workspace/<ds>/report.md`` together with links to those figures. Everything is
redrawn on each call: figures are cheap next to training, and a report never mixes
figures of different runs under one name.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vpipe.errors import StageError
from vpipe.artifacts import atomic_write_text
from vpipe.artifacts.run_record import RunRecord, finished_runs
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.report.html import write_html
from vpipe.report.plots import plot_confusion, plot_history, plot_tsne
from vpipe.report.tables import markdown_table, run_row
from vpipe.train import runs
from vpipe.train.evaluation import before_and_after

log = logging.getLogger(__name__)

#: t-SNE is quadratic in the number of points and embeddings can be 10⁵-dimensional,
#: so at most this many test videos (a seeded random subset) are embedded.
MAX_TSNE_VIDEOS = 500


def plot_run(ws: DatasetWorkspace, run: RunRecord, *, tsne: bool = True, device: str = "auto") -> list[Path]:
    """Draw the figures of one completed run; return their paths. A run that cannot read its
    features any more (re-extracted with another layout) gets no t-SNE, with a warning."""
    run_id = run.run_id
    out = run.directory / runs.PLOTS_DIR
    class_names = run.config.class_names
    paths = [
        plot_history(run.history, run.best_epoch, out / "curves.png", f"{run_id}: training"),
        plot_confusion(
            np.asarray(run.metrics["confusion"]),
            class_names,
            out / "confusion.png",
            f"{run_id}: test accuracy {run.metrics['accuracy']:.3f}",
        ),
    ]
    if tsne and run.metrics["videos"] >= 4:
        try:
            embedded = before_and_after(ws, run, max_videos=MAX_TSNE_VIDEOS, device=device)
        except StageError as exc:
            log.warning("no t-SNE for run %s: %s", run_id, exc)
            return paths
        title = f"{run_id}: t-SNE of {len(embedded.labels)} test videos"
        paths.append(
            plot_tsne(embedded.raw, embedded.embedded, embedded.labels, class_names, out / "tsne.png", title, seed=embedded.seed)
        )
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
    ws: DatasetWorkspace,
    chosen: Sequence[str | RunRecord] | None = None,
    *,
    tsne: bool = True,
    device: str = "auto",
) -> dict[str, Any]:
    """Plot the ``chosen`` runs (default: every completed run) and write ``report.md`` and
    ``report.html``.

    A run is given by its id, or by its record when the caller has read it already (the
    report stage reads every finished run once and hands the records on); each record then
    goes to every figure, table and rebuilt model, so the report reads each run once.
    Returns the table rows, the figure paths per run, the report's path and its text.
    """
    stored = [runs.load_run(ws, run) if isinstance(run, str) else run for run in chosen or ()] or finished_runs(ws.runs_dir)
    if not stored:
        raise StageError(
            f"dataset {ws.dataset!r} has no completed runs to report: "
            f"train one with `vpipe train --dataset {ws.dataset}`"
        )
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
