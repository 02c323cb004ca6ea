"""Options shared by many commands, defined once.

Commands declare them with these ``Annotated`` aliases so every command spells,
documents and validates ``--dataset``, ``--workspace``, ``--workers`` ... the same way.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, fields, is_dataclass
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import typer
from rich.markup import escape
from rich.console import Console

from vpipe import catalog
from vpipe.errors import ConfigError, VpipeError
from vpipe.pipeline.cluster import SYSTEMS, ClusterSpec, load_cluster_file
from vpipe.pipeline.executor import Executor, InProcessExecutor, make_executor
from vpipe.pipeline.notices import configure as configure_notices
from vpipe.pipeline.progress import configure as configure_progress

if TYPE_CHECKING:
    from vpipe.pipeline.workspace import DatasetWorkspace

err = Console(stderr=True, highlight=False, soft_wrap=True)



Dataset = Annotated[
    str,
    typer.Option(
        "--dataset", "-d", help=f"Dataset name: {', '.join(catalog.DATASETS)}; or a name of your own with --adapter."
    ),
]
Root = Annotated[
    Path | None,
    typer.Option(
        "--root", help="Directory holding the dataset (recorded: later commands need not repeat it).", show_default="recorded"
    ),
]
Split = Annotated[
    int | None,
    typer.Option("--split", help="Official split number (1, 2 or 3 for UCF101/HMDB51).", show_default="recorded, else 1"),
]
Adapter = Annotated[
    str | None,
    typer.Option(
        "--adapter",
        help="Dataset adapter when --dataset is a name of your own (e.g. --adapter folder).",
        show_default="the dataset name",
    ),
]
Workspace = Annotated[
    Path | None,
    typer.Option("--workspace", "-w", help="Artifact root.", show_default="$VPIPE_WORKSPACE or ./workspace"),
]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout (progress stays on stderr).")]
Decoder = Annotated[
    Literal["auto", "decord", "pyav"],
    typer.Option(
        "--decoder",
        help="Video decoder: auto is decord for H.264 MP4/MOV, PyAV for everything else.",
    ),
]
Strict = Annotated[bool, typer.Option("--strict", help="Exit non-zero if any item failed.")]
RetryFailed = Annotated[bool, typer.Option("--retry-failed", help="Run items that failed before again.")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens on stderr.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or progress lines (errors still print).")]
LogEvery = Annotated[
    float,
    typer.Option(
        "--log-every",
        min=0.1,
        help="Seconds between progress lines when stderr is not a terminal (batch-job logs).",
    ),
]
def _device_name(value: str) -> str:
    """auto, cpu, cuda, or cuda:N; whether that GPU exists is checked where the work
    runs (:func:`vpipe.device.resolve_device`)."""
    from vpipe.device import check_device_name

    try:
        return check_device_name(value)
    except ConfigError as error:
        raise typer.BadParameter(str(error)) from None


Device = Annotated[
    Literal[catalog.DEVICES],
    typer.Option(
        "--device", parser=_device_name, help="auto: CUDA when present, else CPU; or cuda:N."
    ),
]
Backbone = Annotated[Literal[catalog.BACKBONES], typer.Option("--backbone", "-b", help="Feature backbone (see `vpipe backbones`).")]
Features = Annotated[str, typer.Option("--features", "-f", help="Feature set under features/, e.g. li3d-rgb.")]
Clusters = Annotated[
    int | None,
    typer.Option(
        "--clusters", "-k", min=0, help="Codebook size K; 0 skips encoding.", show_default="128; 16 on synthetic"
    ),
]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Random seed; equal seeds give equal results.")]
Layer = Annotated[
    str | None,
    typer.Option("--layer", help="Cached layer to read (see `vpipe backbones`).", show_default="the first cached layer"),
]
Output = Annotated[
    Path | None, typer.Option("--output", help="File to write the result to.", show_default="stdout")
]
Option = Annotated[
    list[str] | None,
    typer.Option("--option", "-o", help="Parameter KEY=VALUE, repeatable (values are JSON when they parse)."),
]

def dataset_workspace(dataset: str, workspace: Path | None) -> DatasetWorkspace:
    from vpipe.pipeline.workspace import DatasetWorkspace, resolve_workspace

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


@dataclass(frozen=True)
class Compute:
    """Where per-item work runs: in-process, a local cluster, a scheduler, or batch jobs."""

    scheduler: str | None = None
    workers: int | None = None
    cluster: ClusterSpec | None = None

    def executor(self) -> Executor:
        return make_executor(scheduler=self.scheduler, workers=self.workers, cluster=self.cluster)


_COMPUTE_OPTIONS: list[tuple[str, Any, Any]] = [
    ("scheduler", str | None, typer.Option("--scheduler", help="Address of a running dask scheduler, e.g. tcp://host:8786.")),
    ("workers", int | None, typer.Option(
        "--workers", min=0, help="Local dask worker processes; 0 runs in-process.", show_default="one per core"
    )),
    ("cluster", Literal[tuple(SYSTEMS)] | None, typer.Option(
        "--cluster",
        help="Start workers as batch jobs (dask-jobqueue); see docs/cluster.md.", show_default="no batch jobs",
    )),
    ("jobs", int, typer.Option("--jobs", min=1, help="With --cluster: most worker jobs at once (scaled with the work).")),
    ("gpus_per_job", int, typer.Option("--gpus-per-job", min=0, help="With --cluster: GPUs per job; one worker process per GPU, each pinned to it.")),
    ("cores", int, typer.Option("--cores", min=1, help="With --cluster: CPU cores (worker threads) per job.")),
    ("memory", str, typer.Option("--memory", help="With --cluster: memory per job, e.g. 64GB.")),
    ("walltime", str, typer.Option("--walltime", help="With --cluster: time limit per job, HH:MM:SS.")),
    ("queue", str | None, typer.Option("--queue", help="With --cluster: queue or partition.", show_default="the system's")),
    ("account", str | None, typer.Option("--account", help="With --cluster: account or project to charge.", show_default="yours")),
    ("job_extra", list[str] | None, typer.Option(
        "--job-extra", help="With --cluster: extra job directive, repeatable (e.g. --job-extra=--constraint=a100).",
        show_default="none",
    )),
    ("cluster_file", Path | None, typer.Option(
        "--cluster-file", help="YAML of the --cluster options (system, jobs, gpus_per_job, ...); options given win.",
        show_default="none",
    )),
]  # fmt: skip
_COMPUTE_DEFAULTS = {
    "scheduler": None, "workers": None, "cluster": None, "jobs": 1, "gpus_per_job": 0, "cores": 8,
    "memory": "32GB", "walltime": "04:00:00", "queue": None, "account": None, "job_extra": None, "cluster_file": None,
}  # fmt: skip


def compute_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Give ``command`` the options that choose its workers, passed to it as ``compute``.

    Defined once here so that every command running stages spells, documents and
    validates ``--scheduler``, ``--workers`` and the ``--cluster`` family the same way.
    """

    def call(*args: Any, **kwargs: Any) -> Any:
        chosen = {name: kwargs.pop(name, _COMPUTE_DEFAULTS[name]) for name, _, _ in _COMPUTE_OPTIONS}
        return command(*args, compute=compute_from_options(**chosen), **kwargs)

    return with_options(command, call, replaces="compute", options=_COMPUTE_OPTIONS, defaults=_COMPUTE_DEFAULTS)


def with_options(
    command: Callable[..., Any],
    call: Callable[..., Any],
    *,
    replaces: str,
    options: list[tuple[str, Any, Any]],
    defaults: dict[str, Any],
    leading: list[tuple[str, Any, Any]] | None = None,
) -> Callable[..., Any]:
    """``call`` presented to typer as ``command`` whose parameter ``replaces`` became ``options``.

    typer reads a command's options from its signature; a decorator that adds a family of
    options (and hands the command one object built from them) rewrites that signature
    here, so the family is declared once however many commands take it. The options
    stand where ``replaces`` stood, so a command orders its ``--help`` by where it puts
    each family's parameter; ``leading`` options (required unless in ``defaults``) come
    before all of the command's own.
    """
    signature = inspect.signature(command, eval_str=True)
    at = list(signature.parameters).index(replaces)
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in signature.parameters.values()]

    def declare(declared: list[tuple[str, Any, Any]]) -> list[inspect.Parameter]:
        return [
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=defaults.get(name, inspect.Parameter.empty),
                annotation=Annotated[kind, info],
            )
            for name, kind, info in declared
        ]  # fmt: skip

    wrapper = wraps(command)(call)
    parameters = declare(leading or []) + own[:at] + declare(options) + own[at + 1 :]
    wrapper.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper


def declared(aliases: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(name, type, typer.Option)`` of each shared ``Annotated`` alias, as :func:`with_options` takes them."""
    return [(name, *get_args(alias)[:2]) for name, alias in aliases.items()]


def option_group(
    replaces: str, build: Callable[..., Any], aliases: dict[str, Any], defaults: dict[str, Any] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator giving a command the options ``aliases`` (name -> ``Annotated`` option),
    passed to it as one object ``build(**chosen)`` under the parameter ``replaces``.

    Options missing from ``defaults`` take the default of ``build``'s field of that name
    when ``build`` is a dataclass (so a default lives in one place), else ``None``.
    """
    options = declared(aliases)
    own = {f.name: f.default for f in fields(build) if f.default is not MISSING} if is_dataclass(build) else {}
    defaults = {name: None for name in aliases} | {k: v for k, v in own.items() if k in aliases} | (defaults or {})

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            chosen = {name: kwargs.pop(name, defaults[name]) for name in aliases}
            return command(*args, **{replaces: build(**chosen)}, **kwargs)

        return with_options(command, call, replaces=replaces, options=options, defaults=defaults)

    return decorate


def compute_from_options(
    *,
    scheduler: str | None,
    workers: int | None,
    cluster: str | None,
    cluster_file: Path | None,
    jobs: int,
    gpus_per_job: int,
    cores: int,
    memory: str,
    walltime: str,
    queue: str | None,
    account: str | None,
    job_extra: list[str] | None,
) -> Compute:
    """The :class:`Compute` the options describe; the batch-job fields matter only with a cluster."""
    spec = None
    if cluster is not None or cluster_file is not None:
        given = ClusterSpec(
            system=cluster or "slurm", jobs=jobs, gpus_per_job=gpus_per_job, cores=cores, memory=memory,
            walltime=walltime, queue=queue, account=account, job_extra=tuple(job_extra or ()),
        )  # fmt: skip
        spec = load_cluster_file(cluster_file, given, system=cluster) if cluster_file else given
    return Compute(scheduler=scheduler, workers=workers, cluster=spec)


@contextmanager
def executor_for(compute: Compute) -> Iterator[Executor]:
    executor = compute.executor()
    try:
        yield executor
    finally:
        executor.close()


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def show(result: Any, text: Callable[[Any], None], *, json_output: bool) -> None:
    """``result`` as JSON on stdout with ``--json``; otherwise as ``text`` prints it."""
    if json_output:
        emit_json(result)
    else:
        text(result)


def setup_logging(verbose: bool, *, quiet: bool = False, log_every: float | None = None) -> None:
    """Logging, progress defaults and warnings of one command, all on stderr.

    Warnings, the workers' included, print once per run as ``time WARNING stage: message``
    lines, the format of the progress lines (:mod:`vpipe.pipeline.notices`).
    """
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )
    configure_progress(quiet=quiet, log_every=log_every)
    configure_notices()


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn user errors into one line on stderr and exit status 1; bugs keep their traceback."""

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VpipeError as error:
            err.print(f"[red]error:[/] {escape(str(error))}")
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted: finished items are kept; rerun the same command to resume[/]")
            raise typer.Exit(130) from None

    return wrapper


def gpu_stage_executor(device: str, compute: Compute) -> Executor | None:
    """On a local CUDA machine, GPU stages run in this process: one model owns the GPU and
    DataLoader workers decode. With a scheduler or batch jobs, they go to workers offering ``GPU``."""
    from vpipe.device import resolve_device

    remote = compute.scheduler or compute.cluster is not None
    return InProcessExecutor() if resolve_device(device).type == "cuda" and not remote else None
