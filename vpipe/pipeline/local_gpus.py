"""One dask worker process per GPU of this machine (``vpipe run --gpus all|N``).

Without it, flow and extract on a multi-GPU box run in the command's own process on
``cuda:0`` and the other GPUs idle. Here each GPU gets a worker process of its own,
started by a nanny with ``CUDA_VISIBLE_DEVICES`` set to that one GPU before the
process starts (spawned, never forked, so CUDA is initialised only after the pin):
inside it ``cuda`` *is* its GPU, and it holds one model, one set of TV-L1 buffers
and one decoding DataLoader. Each worker offers ``GPU=1`` and runs one task at a
time, so the scheduler lands every flow/extract task on exactly one GPU. The same
pinning as :mod:`vpipe.pipeline.gpu_workers` gives each GPU of a batch job.

CPU stages keep the command's ordinary executor; only stages asking for ``GPU`` use
this cluster.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from vpipe.device import cuda_device_count
from vpipe.errors import ConfigError
from vpipe.pipeline.executor import DaskExecutor
from vpipe.pipeline.worker_env import WORKER_CORES_ENV

log = logging.getLogger(__name__)


def visible_gpus(environ: Mapping[str, str], count: int) -> list[str]:
    """The ids that pin each visible GPU: the entries of an existing ``CUDA_VISIBLE_DEVICES``
    (indices or UUIDs, as a batch system or the user set them), else 0..count-1."""
    listed = environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(count)]
    return [gpu.strip() for gpu in listed.split(",") if gpu.strip()][:count]


def chosen_gpus(gpus: str, environ: Mapping[str, str], count: int) -> list[str]:
    """``--gpus all`` or ``--gpus N`` as the list of GPU ids to pin, one per worker."""
    if count == 0:
        raise ConfigError(f"--gpus {gpus}: this machine has no CUDA device; drop --gpus to run on CPU")
    available = visible_gpus(environ, count)
    if gpus == "all":
        return available
    if not gpus.isdigit() or int(gpus) < 1:
        raise ConfigError(f"--gpus takes 'all' or a number of GPUs >= 1, got {gpus!r}")
    if int(gpus) > len(available):
        raise ConfigError(f"--gpus {gpus}, but this machine has {len(available)} CUDA devices; use --gpus all")
    return available[: int(gpus)]


def check_gpus_option(gpus: str, *, device: str, scheduler: str | None, cluster: object | None) -> None:
    """``--gpus`` starts its own workers on this machine and pins each to one GPU, so it
    cannot be combined with other workers, CPU, or a device index."""
    if scheduler or cluster is not None:
        raise ConfigError("--gpus starts workers on this machine: give it without --scheduler and --cluster")
    if device == "cpu" or device.startswith("cuda:"):
        raise ConfigError(
            f"--gpus pins each worker to one GPU, seen there as cuda: give --device auto or cuda, not {device}"
        )


def gpu_worker_specs(gpus: list[str], environ: Mapping[str, str], memory_bytes: int) -> dict[str, dict[str, Any]]:
    """The ``SpecCluster`` worker specs: per GPU a nanny whose worker sees only that GPU,
    offers ``GPU=1``, runs one task at a time, and gets its share of memory and cores
    (its loader processes are sized from that share, :func:`vpipe.video.prefetch.worker_cores`)."""
    from distributed import Nanny

    cores = max(1, (os.cpu_count() or 1) // len(gpus))
    specs = {}
    for i, gpu in enumerate(gpus):
        env = {
            "CUDA_VISIBLE_DEVICES": gpu,
            "OMP_NUM_THREADS": environ.get("OMP_NUM_THREADS", str(cores)),
            WORKER_CORES_ENV: str(cores),
        }
        specs[f"gpu{i}"] = {
            "cls": Nanny,
            "options": {
                "nthreads": 1,
                "resources": {"GPU": 1},
                "env": env,
                "memory_limit": memory_bytes // len(gpus),
                "name": f"gpu{i}",
                "silence_logs": logging.ERROR,
            },
        }
    return specs


def start_local_gpu_cluster(gpus: list[str]):
    """A ``SpecCluster`` of :func:`gpu_worker_specs` on this machine."""
    import dask
    from distributed import Scheduler, SpecCluster
    from distributed.system import MEMORY_LIMIT

    # Non-daemonic workers may start processes of their own (decoding DataLoaders).
    dask.config.set({"distributed.worker.daemon": False, "distributed.worker.multiprocessing-method": "spawn"})
    scheduler = {"cls": Scheduler, "options": {"dashboard": False, "dashboard_address": ":0"}}
    return SpecCluster(
        workers=gpu_worker_specs(gpus, os.environ, MEMORY_LIMIT), scheduler=scheduler, silence_logs=logging.ERROR
    )


@contextmanager
def local_gpu_executor(
    gpus: str | None, *, device: str, scheduler: str | None = None, cluster: object | None = None
) -> Iterator[DaskExecutor | None]:
    """The executor for GPU stages under ``--gpus``, closed with its cluster after; None
    without ``--gpus``."""
    if gpus is None:
        yield None
        return
    check_gpus_option(gpus, device=device, scheduler=scheduler, cluster=cluster)
    pinned = chosen_gpus(gpus, os.environ, cuda_device_count())
    log.info("starting one worker per GPU: %s", ", ".join(pinned))
    spec_cluster = start_local_gpu_cluster(pinned)
    executor = DaskExecutor(scheduler=spec_cluster.scheduler_address)
    try:
        yield executor
    finally:
        executor.close()
        spec_cluster.close()
