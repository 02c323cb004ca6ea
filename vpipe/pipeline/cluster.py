"""Dask workers as batch jobs (SLURM, PBS, SGE, LSF) through dask-jobqueue.

The driver (``vpipe run`` on a login or head node) starts a dask scheduler, submits
up to ``jobs`` batch jobs, and lets dask scale that number with the queued work: jobs
are submitted when a stage has work and cancelled when they sit idle, so a stage
that is up to date never waits in a batch queue. Workers need the workspace on a
shared filesystem and the same Python environment as the driver (the job script
runs this interpreter).

A job without GPUs runs one worker with the job's cores as threads. A job with N
GPUs runs N worker processes (:mod:`vpipe.pipeline.gpu_workers`), each pinned to
one GPU with ``CUDA_VISIBLE_DEVICES``, offering ``GPU=1`` and sharing the job's
cores and memory: one model, one set of TV-L1 buffers and one DataLoader per GPU.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from vpipe.errors import ConfigError

#: Batch systems and the dask-jobqueue classes that drive them.
SYSTEMS = {"slurm": "SLURM", "pbs": "PBS", "sge": "SGE", "lsf": "LSF"}


@dataclass(frozen=True)
class ClusterSpec:
    """What each batch job asks for; the CLI options and the YAML file share these names."""

    system: str
    jobs: int = 1
    gpus_per_job: int = 0
    cores: int = 8
    memory: str = "32GB"
    walltime: str = "04:00:00"
    queue: str | None = None
    account: str | None = None
    job_extra: tuple[str, ...] = ()
    prologue: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.system not in SYSTEMS:
            raise ConfigError(f"unknown --cluster {self.system!r}: choose one of {', '.join(SYSTEMS)}")
        if self.jobs < 1 or self.cores < 1 or self.gpus_per_job < 0:
            raise ConfigError(
                f"--jobs ({self.jobs}) and --cores ({self.cores}) must be >= 1 and --gpus-per-job "
                f"({self.gpus_per_job}) >= 0"
            )

    @property
    def threads(self) -> int:
        """Worker threads over all jobs: what the executor sizes its task window for."""
        return self.jobs * self.cores


def load_cluster_file(path: Path, spec: ClusterSpec | None = None, system: str | None = None) -> ClusterSpec:
    """A spec from a YAML file whose keys are the option names (``gpus_per_job``, ``job_extra``...).

    Options given on the command line (``spec``'s non-default fields) win over the file.
    """
    import yaml

    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read cluster file {path}: {error}") from error
    if not isinstance(loaded, dict):
        raise ConfigError(f"cluster file {path} must be a mapping of option: value")
    known = {f.name for f in fields(ClusterSpec)}
    unknown = sorted(set(loaded) - known)
    if unknown:
        raise ConfigError(f"cluster file {path}: unknown keys {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for key in ("job_extra", "prologue"):
        if key in loaded:
            loaded[key] = tuple(loaded[key] if isinstance(loaded[key], list) else [loaded[key]])
    if system:
        loaded["system"] = system
    if "system" not in loaded:
        raise ConfigError(f"cluster file {path} names no batch system: add `system: slurm` or pass --cluster")
    base = ClusterSpec(**loaded)
    if spec is None:
        return base
    defaults = ClusterSpec(system=spec.system)
    overrides = {f.name: getattr(spec, f.name) for f in fields(spec) if getattr(spec, f.name) != getattr(defaults, f.name)}
    return replace(base, **overrides)


def _gpu_directives(spec: ClusterSpec) -> tuple[list[str], dict[str, str]]:
    """Job directives and extra class arguments that reserve the job's GPUs."""
    n = spec.gpus_per_job
    if not n:
        return [], {}
    if spec.system == "slurm":
        return [f"--gres=gpu:{n}"], {}
    if spec.system == "pbs":
        return [], {"resource_spec": f"select=1:ncpus={spec.cores}:ngpus={n}:mem={spec.memory}"}
    if spec.system == "sge":
        return [f"-l gpu={n}"], {}
    return [f'-gpu "num={n}"'], {}


def jobqueue_arguments(spec: ClusterSpec) -> dict[str, Any]:
    """Keyword arguments shared by the dask-jobqueue cluster and job classes."""
    directives, extra = _gpu_directives(spec)
    account = "project" if spec.system in ("sge", "lsf") else "account"
    workers_args = ["--resources", "GPU=1"] if spec.gpus_per_job else []
    python = sys.executable
    if spec.gpus_per_job > 1:
        python = f"{sys.executable} -m vpipe.pipeline.gpu_workers --gpus {spec.gpus_per_job} --"
    return {
        "cores": spec.cores,
        "processes": 1,
        "memory": spec.memory,
        "walltime": spec.walltime,
        "queue": spec.queue,
        account: spec.account,
        "job_name": "vpipe-worker",
        "job_extra_directives": [*directives, *spec.job_extra],
        "worker_extra_args": workers_args,
        "job_script_prologue": [f"cd {os.getcwd()}", "export OMP_NUM_THREADS=1", *spec.prologue],
        "python": python,
        **extra,
    }


def _module(spec: ClusterSpec):
    try:
        import dask_jobqueue
    except ImportError as error:
        raise ConfigError(
            f"--cluster {spec.system} needs dask-jobqueue: pip install 'vpipe[cluster]'"
        ) from error
    return dask_jobqueue


def job_script(spec: ClusterSpec, scheduler: str = "tcp://scheduler:8786") -> str:
    """The batch script one worker job runs, without starting anything (to check or to show)."""
    module = _module(spec)
    job_class = getattr(module, f"{SYSTEMS[spec.system]}Cluster").job_cls
    return job_class(scheduler=scheduler, name="vpipe-worker", **jobqueue_arguments(spec)).job_script()


def start_cluster(spec: ClusterSpec):
    """A dask-jobqueue cluster that submits up to ``spec.jobs`` jobs while there is work."""
    module = _module(spec)
    cluster = getattr(module, f"{SYSTEMS[spec.system]}Cluster")(**jobqueue_arguments(spec))
    cluster.adapt(minimum_jobs=0, maximum_jobs=spec.jobs)
    return cluster
