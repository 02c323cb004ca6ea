"""The flags and the ending every stage-running command shares, declared once.

``probe``, ``plan``, ``flow``, ``extract`` and ``run`` all take ``--retry-failed --strict
--json --verbose --quiet --log-every``, set up logging and progress the same way before any
work, and end by printing their stages' reports the same way. :func:`stage_command` adds
all of that, so a command body only builds its stages and runs them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from vpipe.cli.options import Json, LogEvery, Quiet, RetryFailed, Strict, Verbose, declared, emit_json, err
from vpipe.cli.options import setup_logging, user_errors, with_options
from vpipe.pipeline.notices import summarise as summarise_notices

if TYPE_CHECKING:
    from vpipe.pipeline.stage import StageReport

Reports = list["StageReport"]
"""What a stage command returns; spelled without importing the stage module, since typer
evaluates command annotations when ``--help`` is built."""


@dataclass(frozen=True)
class RunFlags:
    """What a stage command needs of the shared flags while it runs."""

    retry_failed: bool = False
    json_output: bool = False


_RUN_OPTIONS = declared(
    {"retry_failed": RetryFailed, "strict": Strict, "json_output": Json, "verbose": Verbose, "quiet": Quiet,
     "log_every": LogEvery}
)  # fmt: skip
_RUN_DEFAULTS = {
    "retry_failed": False, "strict": False, "json_output": False, "verbose": False, "quiet": False, "log_every": 30.0,
}  # fmt: skip


def stage_command(command: Callable[..., Reports | None]) -> Callable[..., None]:
    """Give ``command`` the run flags, passed to it as ``flags``, and :func:`user_errors`.

    Logging and progress are set up before the command runs, so its first stage already
    reports in the batch-job format; the reports it returns are printed by :func:`finish`.
    A command that returns ``None`` (``run --dry-run``) has printed what it had to say.
    """

    def call(*args: Any, **kwargs: Any) -> None:
        chosen = {name: kwargs.pop(name, _RUN_DEFAULTS[name]) for name, _, _ in _RUN_OPTIONS}
        setup_logging(chosen["verbose"], quiet=chosen["quiet"], log_every=chosen["log_every"])
        flags = RunFlags(retry_failed=chosen["retry_failed"], json_output=chosen["json_output"])
        reports = command(*args, flags=flags, **kwargs)
        if reports is not None:
            finish(reports, chosen["json_output"], chosen["strict"])

    return with_options(command, user_errors(call), replaces="flags", options=_RUN_OPTIONS, defaults=_RUN_DEFAULTS)


def finish(reports: list[StageReport], json_output: bool, strict: bool) -> None:
    """Print any stages' reports: a summary line each, retrieval figures, results tables, totals."""
    summarise_notices()
    failed = sum(r.failed for r in reports)
    if json_output:
        emit_json({"stages": [r.to_dict() for r in reports], "failed": failed})
    else:
        for report in reports:
            typer.echo(report.summary())
        for report in reports:
            retrieval = report.details.get("retrieval")
            if retrieval:
                figures = "  ".join(f"{k} {retrieval[k]:.3f}" for k in ("R@1", "R@5", "mAP") if retrieval.get(k) is not None)
                typer.echo(f"retrieval ({retrieval['embedding']}, test queries against train videos): "
                           f"{figures or retrieval.get('skipped', 'not evaluated')}")  # fmt: skip
        for report in reports:
            if "table" in report.details:
                typer.echo("\n" + report.details["table"].strip() + "\n")
                typer.echo(f"report: {report.details['report']}")
                for run_id, plots in report.details.get("plots", {}).items():
                    if plots:
                        typer.echo(f"plots of {run_id}: {Path(plots[0]).parent}")
        did = sum(r.computed for r in reports)
        typer.echo(
            ("nothing to do: everything is up to date" if did == 0 else f"done: {did} items processed")
            + f"; {failed} failed item(s)"
            + (" (see failures.parquet)" if failed else "")
        )
    if strict and failed:
        err.print(f"[red]{failed} item(s) failed and --strict is set[/]")
        raise typer.Exit(1)
