"""The run directory ``workspace/<ds>/runs/<run_id>/`` and how runs are found again.

Files, in the order a run writes them::

    config.json      written first: options, data, features' provenance, codebook, fingerprint
    history.csv      rewritten after every epoch, so a long run can be watched
    checkpoint.pt    the best-validation state dict with the config, rewritten on improvement
    metrics.json     written last: the test metrics; its presence marks the run complete
    plots/           written by ``vpipe report``

A run id is reserved by creating its directory (an atomic ``mkdir``), so two trainings
started at once never share one. Completion is marked by ``metrics.json`` rather than by
renaming a temporary directory, so a killed run stays visible, with its config and
history, for whoever wants to know what happened to it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vpipe.artifacts import atomic_write_text
# The run's file names live with its record; re-exported, as the trainer writes by them.
from vpipe.artifacts.run_record import CHECKPOINT_FILE, CONFIG_FILE, HISTORY_FILE, METRICS_FILE, RunRecord  # noqa: F401
from vpipe.artifacts.run_record import finished_runs
from vpipe.errors import ConfigError, StageError
from vpipe.pipeline.workspace import DatasetWorkspace

EVALUATION_FILE = "evaluation.json"
PLOTS_DIR = "plots"

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


def check_run_id(run_id: str) -> None:
    """A run id is a directory name: no separators, no leading dot."""
    if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith("."):
        raise ConfigError(f"invalid run id {run_id!r}: use a plain name like 'li3d-rgb-bilstm-mean-k128-s0'")


def reserve(ws: DatasetWorkspace, run_id: str, *, explicit: bool) -> tuple[str, Path]:
    """Create the run's directory and return (id, directory).

    A default id that is taken gets the first free suffix ``-2``, ``-3``, ...; an id the
    user chose explicitly is never renamed, so taking it is an error.
    """
    check_run_id(run_id)
    root = ws.runs_dir
    root.mkdir(parents=True, exist_ok=True)
    candidate, n = run_id, 1
    while True:
        try:
            (root / candidate).mkdir()
            return candidate, root / candidate
        except FileExistsError:
            if explicit:
                raise ConfigError(
                    f"run {run_id!r} already exists in {root}: choose another --run-id or delete that directory"
                ) from None
            n += 1
            candidate = f"{run_id}-{n}"


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def completed_runs(ws: DatasetWorkspace) -> list[str]:
    """Ids of runs that finished (have ``metrics.json``), oldest first."""
    return [run.run_id for run in finished_runs(ws.runs_dir)]


def load_run(ws: DatasetWorkspace, run_id: str) -> RunRecord:
    """A completed run; :class:`StageError` naming the existing runs when there is none."""
    check_run_id(run_id)
    directory = ws.runs_dir / run_id
    if not (directory / METRICS_FILE).is_file() or not (directory / CHECKPOINT_FILE).is_file():
        existing = completed_runs(ws)
        state = "did not finish" if directory.is_dir() else "does not exist"
        raise StageError(
            f"run {run_id!r} of dataset {ws.dataset!r} {state}; "
            + (
                f"completed runs: {', '.join(existing)}"
                if existing
                else f"there are no completed runs: train one with `vpipe train --dataset {ws.dataset}`"
            )
        )
    return RunRecord.from_directory(directory)


def find_by_fingerprint(
    ws: DatasetWorkspace, fingerprint: str, among: Sequence[RunRecord] | None = None
) -> RunRecord | None:
    """The newest completed run trained from exactly these inputs and options, if any.

    ``among`` are the finished runs when the caller has read them already
    (:func:`~vpipe.artifacts.run_record.finished_runs`), so asking for several fingerprints reads each run once.
    """
    for run in reversed(finished_runs(ws.runs_dir) if among is None else among):
        if run.config.fingerprint == fingerprint:
            return run
    return None
