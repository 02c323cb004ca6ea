"""One dask worker process per GPU of a batch job, each seeing only its own GPU.

A job with N GPUs used to run one worker offering ``GPU=N``: N tasks ran as threads
of one process, all on ``cuda:0``. The job script now runs this launcher in place of
the worker: it starts N copies of the worker command, the i-th with
``CUDA_VISIBLE_DEVICES`` set to the i-th GPU the batch system gave the job, so each
process's ``cuda`` is its own GPU and CUDA is never initialised before the pin.
Each copy offers ``GPU=1`` and gets its share of the job's threads and memory, and a
name of its own (the scheduler refuses two workers of one name).

    python -m vpipe.pipeline.gpu_workers --gpus 4 -- -m distributed.cli.dask_worker ...
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence

from vpipe.errors import ConfigError
from vpipe.pipeline.worker_env import WORKER_CORES_ENV, visible_cores


def job_gpus(count: int, environ: Mapping[str, str]) -> list[str]:
    """The job's first ``count`` GPUs as the batch system lists them.

    SLURM, PBS, SGE and LSF set ``CUDA_VISIBLE_DEVICES`` to the GPUs they gave the job
    (indices or UUIDs); without it the job owns the machine and GPUs 0..count-1 are used.
    """
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [g.strip() for g in listed.split(",") if g.strip()] if listed is not None else [str(i) for i in range(count)]
    if len(gpus) < count:
        raise ConfigError(f"--gpus-per-job {count}, but this job sees CUDA_VISIBLE_DEVICES={listed!r}")
    return gpus[:count]


def pinned_commands(
    args: Sequence[str], gpus: Sequence[str], environ: Mapping[str, str]
) -> list[tuple[list[str], dict[str, str]]]:
    """(arguments, environment) of each GPU's worker, from the job's one worker command.

    Each gets ``1/n`` of the job's threads, memory and cores; the cores size its loader
    processes (:func:`vpipe.video.prefetch.worker_cores`), which otherwise would count every
    core of the job as theirs in every one of the ``n`` workers.
    """
    from dask.utils import format_bytes, parse_bytes

    n = len(gpus)
    job_cores = int(args[list(args).index("--nthreads") + 1]) if "--nthreads" in args else visible_cores()
    cores = max(1, job_cores // n)
    commands = []
    for i, gpu in enumerate(gpus):
        out = list(args)
        for flag, share in (
            ("--nthreads", lambda v: str(max(1, int(v) // n))),
            ("--memory-limit", lambda v: format_bytes(parse_bytes(v) // n).replace(" ", "")),
            ("--name", lambda v, i=i: f"{v}-gpu{i}"),
            ("--resources", lambda v: "GPU=1"),
        ):
            if flag in out:
                at = out.index(flag) + 1
                out[at] = share(out[at])
        commands.append((out, {**environ, "CUDA_VISIBLE_DEVICES": gpu, WORKER_CORES_ENV: str(cores)}))
    return commands


def main(argv: Sequence[str] | None = None) -> int:
    """Start the pinned workers, pass SIGTERM/SIGINT on to them, and return the worst exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 3 or argv[0] != "--gpus" or "--" not in argv:
        raise SystemExit("usage: python -m vpipe.pipeline.gpu_workers --gpus N -- WORKER-ARGS...")
    count = int(argv[1])
    rest = argv[argv.index("--") + 1 :]
    children = [
        subprocess.Popen([sys.executable, *args], env=env)
        for args, env in pinned_commands(rest, job_gpus(count, os.environ), os.environ)
    ]

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(abs(child.wait()) for child in children)


if __name__ == "__main__":
    sys.exit(main())
