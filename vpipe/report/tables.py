"""The comparison table of runs, in the layout of the papers' ablations.

li3d-bilstm Table 3 compares LI3D, LI3D-LSTM and LI3D-BiLSTM by accuracy, precision and
recall; soft-correlation Tables 1–2 compare aggregations and cluster counts by those and
by parameters and testing time. One row per run, with the choices that distinguish runs
(temporal layer, aggregation, K) next to the test metrics, makes any such ablation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vpipe.train.runs import StoredRun

COLUMNS = (
    ("run", "Run"),
    ("features", "Features"),
    ("temporal", "Temporal"),
    ("aggregation", "Aggregation"),
    ("clusters", "K"),
    ("accuracy", "Accuracy"),
    ("macro_precision", "Precision"),
    ("macro_recall", "Recall"),
    ("top5", "Top-5"),
    ("parameters", "Params"),
    ("test_ms_per_video", "Test ms/video"),
)
_NUMERIC = {"clusters", "accuracy", "macro_precision", "macro_recall", "top5", "parameters", "test_ms_per_video"}


def run_row(run: StoredRun) -> dict[str, Any]:
    """One table row as plain values (also the ``--json`` form)."""
    options, metrics = run.config["train"], run.metrics
    return {
        "run": run.run_id,
        "features": options["features"],
        "temporal": options["temporal"],
        "aggregation": options["aggregation"],
        "clusters": options["clusters"] if options["aggregation"] != "avg" else None,
        "accuracy": metrics["accuracy"],
        "macro_precision": metrics["macro_precision"],
        "macro_recall": metrics["macro_recall"],
        "top5": metrics["top5"],
        "parameters": metrics["parameters"],
        "test_ms_per_video": metrics["test_ms_per_video"],
        "test_videos": metrics["videos"],
    }


def human_count(n: int) -> str:
    """Parameter counts as the papers print them: 8.16M, 532.5K."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f}{suffix}" if suffix != "K" else f"{n / scale:.1f}{suffix}"
    return str(n)


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "–"
    if key == "parameters":
        return human_count(int(value))
    if key == "test_ms_per_video":
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """A GitHub-flavoured Markdown table, one row per run; metric columns right-aligned."""
    header = "| " + " | ".join(title for _, title in COLUMNS) + " |"
    align = "|" + "|".join("---:" if key in _NUMERIC else "---" for key, _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(key, row[key]) for key, _ in COLUMNS) + " |" for row in rows]
    return "\n".join([header, align, *body])

