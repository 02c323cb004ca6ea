"""Per-class accuracy, the most frequent confusions and the failure summary, as HTML.

A confusion-matrix heat map of 101 or 400 classes cannot carry class names or counts,
so the page also lists what a reader looks for in it as text: every class with its
accuracy (recall of the class, the papers' per-class accuracy), worst first, and the
off-diagonal cells with the most videos, each named "true → predicted". Both stay
legible at any class count. The per-class table sits in an open ``<details>`` element:
it prints in full, and a reader can fold it away without any script.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vpipe.pipeline.failures import read_failures

#: Confusions listed per run: enough to show the systematic mix-ups of 400 classes.
TOP_CONFUSIONS = 20
#: Failed items listed per stage; the count covers all of them.
FAILURES_LISTED = 10


def per_class_accuracy(matrix: np.ndarray, class_names: Sequence[str]) -> list[dict[str, Any]]:
    """One row per class present in the test split, worst accuracy first (ties by name)."""
    matrix = np.asarray(matrix, dtype=np.int64)
    support = matrix.sum(axis=1)
    rows = [
        {"class": str(name), "accuracy": float(matrix[i, i] / support[i]), "correct": int(matrix[i, i]),
         "videos": int(support[i])}
        for i, name in enumerate(class_names) if support[i] > 0
    ]  # fmt: skip
    return sorted(rows, key=lambda row: (row["accuracy"], row["class"]))


def top_confusions(matrix: np.ndarray, class_names: Sequence[str], k: int = TOP_CONFUSIONS) -> list[dict[str, Any]]:
    """The ``k`` off-diagonal cells with the most videos, as (true, predicted, videos, share of true)."""
    matrix = np.asarray(matrix, dtype=np.int64)
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    cells = [(int(off[i, j]), i, j) for i, j in zip(*np.nonzero(off))]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    support = matrix.sum(axis=1)
    return [
        {"true": str(class_names[i]), "predicted": str(class_names[j]), "videos": count,
         "share": float(count / support[i])}
        for count, i, j in cells[:k]
    ]  # fmt: skip


def _table(head: Sequence[tuple[str, bool]], rows: Sequence[Sequence[str]]) -> str:
    """A plain table; ``head`` is (title, numeric) per column."""
    cls = ['class="num"' if numeric else "" for _, numeric in head]
    top = "".join(f"<th {c}>{html.escape(t)}</th>" for (t, _), c in zip(head, cls))
    body = "".join("<tr>" + "".join(f"<td {c}>{html.escape(v)}</td>" for v, c in zip(row, cls)) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><thead><tr>{top}</tr></thead><tbody>{body}</tbody></table></div>'


def classes_html(metrics: dict[str, Any], class_names: Sequence[str]) -> str:
    """Per-class accuracy (folded) and the top confusions of one run."""
    matrix = np.asarray(metrics["confusion"])
    per_class = per_class_accuracy(matrix, class_names)
    confusions = top_confusions(matrix, class_names)
    accuracy = _table(
        (("class", False), ("accuracy", True), ("correct", True), ("videos", True)),
        [(r["class"], f"{r['accuracy']:.3f}", str(r["correct"]), str(r["videos"])) for r in per_class],
    )
    parts = [
        f'<details class="per-class" open><summary>Per-class accuracy, {len(per_class)} classes, worst first</summary>'
        f"{accuracy}</details>"
    ]
    if confusions:
        parts.append(f"<h3>Most frequent confusions (top {len(confusions)})</h3>")
        parts.append(
            _table(
                (("true class", False), ("predicted as", False), ("videos", True), ("share of true class", True)),
                [(c["true"], c["predicted"], str(c["videos"]), f"{c['share']:.3f}") for c in confusions],
            )
        )
    else:
        parts.append("<p>No confusions: every test video is classified correctly.</p>")
    return "\n".join(parts)


def failures_html(failures_path: Path) -> str:
    """Failed items per stage: the count and the first :data:`FAILURES_LISTED` with their error."""
    table = read_failures(failures_path)
    if table.empty:
        return "<h2>Failures</h2><p>No failed items.</p>"
    parts = ["<h2>Failures</h2>", "<p>Items that could not be processed (<code>failures.parquet</code>).</p>"]
    counts = table.groupby("stage", sort=True).size()
    parts.append(_table((("stage", False), ("failed items", True)), [(s, str(n)) for s, n in counts.items()]))
    for stage, rows in table.groupby("stage", sort=True):
        listed = rows.sort_values("video_id").head(FAILURES_LISTED)
        more = len(rows) - len(listed)
        parts.append(f"<h3>{html.escape(str(stage))}</h3>")
        parts.append(
            _table(
                (("video", False), ("path", False), ("error", False)),
                [(str(r.video_id), str(r.path), str(r.error)) for r in listed.itertuples()],
            )
        )
        if more:
            parts.append(f"<p>… and {more} more.</p>")
    return "\n".join(parts)
