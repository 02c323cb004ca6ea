"""The comparison table of runs, in the layout of the papers' ablations.

li3d-bilstm Table 3 compares LI3D, LI3D-LSTM and LI3D-BiLSTM by accuracy, precision and
recall; soft-correlation Tables 1–2 compare aggregations and cluster counts by those and
by parameters and testing time. One row per run, with what distinguishes runs (the head, its
inputs and the options that differ from the head's defaults) next to the test metrics,
makes any such ablation, for every registered head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vpipe.models.heads import head_class
from vpipe.artifacts.run_record import RunConfig, RunRecord

COLUMNS = (
    ("run", "Run"),
    ("head", "Head"),
    ("inputs", "Inputs"),
    ("settings", "Settings"),
    ("accuracy", "Accuracy"),
    ("macro_precision", "Precision"),
    ("macro_recall", "Recall"),
    ("top5", "Top-5"),
    ("parameters", "Params"),
    ("test_ms_per_video", "Test ms/video"),
)
_NUMERIC = {"accuracy", "macro_precision", "macro_recall", "top5", "parameters", "test_ms_per_video"}


def run_row(run: RunRecord) -> dict[str, Any]:
    """One table row as plain values (also the ``--json`` form)."""
    options, metrics = run.config.train, run.metrics
    return {
        "run": run.run_id,
        "head": options["head"],
        "inputs": inputs_label(run.config),
        "settings": settings_label(options),
        "accuracy": metrics["accuracy"],
        "macro_precision": metrics["macro_precision"],
        "macro_recall": metrics["macro_recall"],
        "top5": metrics["top5"],
        "parameters": metrics["parameters"],
        "test_ms_per_video": metrics["test_ms_per_video"],
        "test_videos": metrics["videos"],
    }


def inputs_label(config: RunConfig) -> str:
    """``li3d-rgb + li3d-flow (late)``: the feature sets, the fusion, and non-default layers."""
    options = config.train
    features = options["features"]
    label = " + ".join(features)
    if len(features) > 1 and not head_class(options["head"]).streams > 1:
        label += f" ({options['fusion']})"
    layers = sorted({spec["layer"] for spec in config.inputs or ()} - {"pool"})
    return label + (f" [{', '.join(layers)}]" if layers else "")


def settings_label(options: dict[str, Any]) -> str:
    """The head's options that differ from its defaults, as ``key=value``."""
    defaults = {o.name: o.default for o in head_class(options["head"]).options}
    changed = [f"{k}={v}" for k, v in options["head_options"].items() if k != "layer" and defaults.get(k) != v]
    return " ".join(changed) or "defaults"


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

