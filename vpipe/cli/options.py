"""Options shared by many commands, defined once.

Commands declare them with these ``Annotated`` aliases so every command spells,
documents and validates ``--dataset``, ``--workspace``, ``--workers`` ... the same way.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from vpipe.errors import ConfigError, VpipeError
from vpipe.pipeline.executor import Executor, InProcessExecutor, make_executor
from vpipe.pipeline.workspace import DatasetWorkspace, resolve_workspace

err = Console(stderr=True, highlight=False, soft_wrap=True)

Dataset = Annotated[
    str,
    typer.Option("--dataset", "-d", help="Dataset name: ucf101, hmdb51, kinetics, folder, csv or synthetic."),
]
Root = Annotated[
    Optional[Path],
    typer.Option("--root", help="Directory holding the dataset (recorded: later commands need not repeat it)."),
]
Split = Annotated[Optional[int], typer.Option("--split", help="Official split number (1, 2 or 3 for UCF101/HMDB51).")]
Adapter = Annotated[
    Optional[str],
    typer.Option("--adapter", help="Dataset adapter when --dataset is a name of your own (e.g. --adapter folder)."),
]
Workspace = Annotated[
    Optional[Path],
    typer.Option("--workspace", "-w", help="Artifact root [default: $VPIPE_WORKSPACE or ./workspace]."),
]
Scheduler = Annotated[
    Optional[str],
    typer.Option("--scheduler", help="Address of a running dask scheduler, e.g. tcp://host:8786."),
]
Workers = Annotated[
    Optional[int],
    typer.Option("--workers", min=0, help="Local dask worker processes [default: one per core]; 0 runs in-process."),
]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
Decoder = Annotated[str, typer.Option("--decoder", help="Video decoder: auto (decord, PyAV fallback), decord or pyav.")]
Strict = Annotated[bool, typer.Option("--strict", help="Exit non-zero if any item failed.")]
RetryFailed = Annotated[bool, typer.Option("--retry-failed", help="Run items that failed before again.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens on stderr.")]


def dataset_workspace(dataset: str, workspace: Path | None) -> DatasetWorkspace:
    return DatasetWorkspace(resolve_workspace(workspace), dataset)


def parse_key_values(pairs: list[str] | None, option: str) -> dict[str, Any]:
    """``["need=32", "flip=true"]`` -> ``{"need": 32, "flip": True}`` (values parsed as JSON when they can be)."""
    parsed: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} expects KEY=VALUE, got {pair!r}")
        try:
            parsed[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            parsed[key.strip().replace("-", "_")] = value
    return parsed


@contextmanager
def executor_for(scheduler: str | None, workers: int | None) -> Iterator[Executor]:
    executor = make_executor(scheduler=scheduler, workers=workers)
    try:
        yield executor
    finally:
        executor.close()


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one line on stderr and exit status 1; bugs keep their traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VpipeError as error:
            err.print(f"[red]error:[/] {error}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted: finished items are kept; rerun the same command to resume[/]")
            raise typer.Exit(130) from None

    return wrapper


def gpu_stage_executor(device: str, scheduler: str | None) -> Executor | None:
    """On a local CUDA machine, GPU stages run in this process: one model owns the GPU and
    DataLoader workers decode. With a scheduler, they go to workers offering ``GPU``."""
    from vpipe.device import resolve_device

    return InProcessExecutor() if resolve_device(device).type == "cuda" and not scheduler else None


def run_single_stage(stage, *, device: str, scheduler: str | None, workers: int | None, retry_failed: bool):
    """Run one flow/extract stage on the executor its device calls for, closing it after."""
    from vpipe.pipeline.runner import run_stage

    executor = gpu_stage_executor(device, scheduler) or make_executor(scheduler, workers)
    try:
        return run_stage(stage, executor, retry_failed=retry_failed)
    finally:
        executor.close()
