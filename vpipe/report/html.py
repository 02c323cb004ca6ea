"""``report.html``: the report as one self-contained page, beside ``report.md``.

Everything the page shows is inside the file: figures are PNG data URIs, the style sheet
is inline, and there are no scripts, fonts or links to fetch, so it opens offline, can be
mailed as one attachment and prints as it looks (figures never split across pages, the
table's header repeats on each printed page). The page holds the results table of every
reported run, each index's retrieval figures (``index/*-evaluation.json``), the failure
summary (``failures.parquet``), frame strips of a few queries and their hits
(:mod:`vpipe.report.strips`), and per run its figures, per-class accuracy and most
frequent confusions (:mod:`vpipe.report.classes`). Above
:data:`~vpipe.report.plots.CONFUSION_NAMED_CLASSES` classes the confusion matrix is inline
SVG in clustered order with names on hover (:mod:`vpipe.report.confusion_map`) instead of
the PNG that ``report.md`` links.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vpipe.artifacts import atomic_write_text
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.report.classes import classes_html, failures_html
from vpipe.report.confusion_map import cluster_order, confusion_svg
from vpipe.report.plots import CONFUSION_NAMED_CLASSES
from vpipe.report.strips import retrieval_examples_html
from vpipe.report.tables import COLUMNS, _cell
from vpipe.artifacts.run_record import RunRecord

_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem auto; max-width: 72rem;
       padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; vertical-align: top; }
td.num, th.num { text-align: right; }
thead { display: table-header-group; }
.scroll { overflow-x: auto; }
figure { margin: 0.5rem 0 1rem; break-inside: avoid; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
svg.confusion { width: 100%; height: auto; display: block; }
svg.confusion rect:hover { stroke: #d62728; stroke-width: 2; }
.strips { display: flex; flex-wrap: wrap; gap: 0.5rem; break-inside: avoid; margin-bottom: 1rem; }
figure.strip { margin: 0; font-size: 12px; max-width: 17rem; }
figure.strip:first-child { border-right: 3px solid #888; padding-right: 0.5rem; }
h2 { break-after: avoid; margin-top: 2rem; }
@media print { body { max-width: none; font-size: 11pt; } .scroll { overflow: visible; } }
"""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _results_table(rows: Sequence[dict[str, Any]]) -> str:
    numeric = {key for key, _ in COLUMNS if any(isinstance(row[key], (int, float)) for row in rows)}
    head = "".join(f'<th class="{"num" if k in numeric else ""}">{html.escape(t)}</th>' for k, t in COLUMNS)
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if k in numeric else ""}">{html.escape(_cell(k, row[k]))}</td>'
                         for k, _ in COLUMNS) + "</tr>"
        for row in rows
    )  # fmt: skip
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _evaluations(ws: DatasetWorkspace) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(ws.index_dir.glob("*-evaluation.json"))]


def _retrieval_table(evaluations: list[dict[str, Any]]) -> str:
    if not evaluations:
        return ""
    keys = [k for k in ("R@1", "R@5", "R@10", "mAP") if any(k in e for e in evaluations)]
    head = "<th>index</th><th>embedding</th><th class=num>queries</th>" + "".join(f"<th class=num>{k}</th>" for k in keys)
    body = "".join(
        f"<tr><td>{html.escape(str(e.get('index')))}</td><td>{html.escape(str(e.get('embedding')))}</td>"
        f"<td class=num>{e.get('queries')}</td>"
        + "".join(f"<td class=num>{e[k]:.3f}</td>" if isinstance(e.get(k), float) else "<td></td>" for k in keys)
        + "</tr>"
        for e in evaluations
    )
    return ("<h2>Retrieval</h2><p>Test videos query the train videos; Recall@K and mAP by label.</p>"
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>')  # fmt: skip


def _figure(path: Path, run: RunRecord) -> str:
    """One figure of a run: its PNG, or the confusion matrix as SVG above the named-axes limit."""
    names = run.config.class_names
    if path.stem == "confusion" and len(names) > CONFUSION_NAMED_CLASSES:
        matrix = np.asarray(run.metrics["confusion"])
        title = f"{run.run_id}: confusion matrix of {len(names)} classes"
        svg = confusion_svg(matrix, names, cluster_order(matrix), title)
        caption = (f"confusion, {len(names)} classes, rows and columns clustered by confusion; rows sum to 1, "
                   "colour on a square-root scale; zoom in for names, hover a cell for its classes and count")  # fmt: skip
        return f'<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>'
    return (f'<figure><img src="{data_uri(path)}" alt="{html.escape(path.stem)} of {html.escape(run.run_id)}">'
            f"<figcaption>{html.escape(path.stem)}</figcaption></figure>")  # fmt: skip


def write_html(
    ws: DatasetWorkspace, rows: Sequence[dict[str, Any]], plots: dict[str, list[Path]], stored: Sequence[RunRecord],
    *, device: str = "auto",
) -> Path:
    """Write ``report.html`` next to ``report.md``; return its path."""
    by_id = {run.run_id: run for run in stored}
    evaluations = _evaluations(ws)
    title = html.escape(f"{ws.dataset}: trained heads")
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{_STYLE}</style></head><body><h1>{title}</h1>",
        "<p>Test-split metrics of each run (macro precision and recall over classes; parameters of the head; "
        "model time per test video, cached features given).</p>",
        _results_table(rows),
        _retrieval_table(evaluations),
        retrieval_examples_html(ws, [str(e["index"]) for e in evaluations], device=device),
        failures_html(ws.failures_path),
    ]
    for run_id, paths in plots.items():
        parts.append(f"<h2>{html.escape(run_id)}</h2>")
        run = by_id[run_id]
        parts += [_figure(p, run) for p in paths]
        parts.append(classes_html(run.metrics, run.config.class_names))
    parts.append("</body></html>\n")
    path = ws.report_path.with_suffix(".html")
    atomic_write_text(path, "\n".join(parts))
    return path
