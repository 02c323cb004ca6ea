"""The cores a worker may use, told to it by whoever started it.

A machine or batch job that runs one worker process per GPU gives each the whole
machine's view: every worker sees every core. The launchers
(:mod:`vpipe.pipeline.local_gpus`, :mod:`vpipe.pipeline.gpu_workers`) therefore write
each worker's share into its environment, and the code that sizes process pools
(:func:`vpipe.video.prefetch.default_loader_workers`) reads it from there. Light on
purpose: the launchers import it before any worker, and before CUDA, exists.
"""

from __future__ import annotations

import os

#: Cores this worker may use when it shares a machine or a job with other GPU workers.
WORKER_CORES_ENV = "VPIPE_WORKER_CORES"


def visible_cores() -> int:
    """The cores this process may run on (its affinity, which a batch job's cgroup sets)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def worker_cores() -> int:
    """This worker's share of cores when launched as one of several GPU workers, else
    :func:`visible_cores`."""
    share = os.environ.get(WORKER_CORES_ENV)
    return max(1, int(share)) if share else visible_cores()
