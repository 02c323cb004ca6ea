"""Loading videos in worker processes ahead of the compute that consumes them.

A GPU that waits for the CPU to decode is idle: extraction and flow both load video
``i + k`` (decode, crop, stack) while the model or TV-L1 works on video ``i``. The
pool of loader processes is kept for the life of the dask worker (or command) that
owns it, not rebuilt per task, so its start-up (a fresh interpreter importing torch
and PyAV) is paid once per GPU, not once per 64 videos.

Loader processes are *spawned*, never forked: forking a process that has initialised
CUDA gives the child a broken CUDA context. Results come back in submission order,
with a video's exception in place of its result, so one unreadable video never stops
the others. With no loader processes everything runs in this process, in order, which
is what CPU runs use: there the cores are already busy computing, and extra
processes would only compete with them.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

import torch

from vpipe.pipeline.worker_env import worker_cores

Job = TypeVar("Job")
Loaded = TypeVar("Loaded")

#: Videos loaded ahead per loader process: enough to cover a slow one, few enough
#: that decoded clips waiting in memory stay a small multiple of one batch.
AHEAD_PER_WORKER = 2


def default_loader_workers(device: torch.device) -> int:
    """Loader processes by default: on CUDA, up to 4 per GPU, one core left to the process
    driving the GPU, out of this worker's share of cores (eight GPU workers on a 16-core
    box get one loader each, not four: 32 loaders would fight for 16 cores); on CPU none
    (see the module docstring)."""
    if device.type != "cuda":
        return 0
    return max(1, min(4, worker_cores() - 1))


@functools.lru_cache(maxsize=2)
def loader_pool(workers: int) -> ProcessPoolExecutor:
    """This process's pool of ``workers`` spawned loader processes, reused by every task."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _load_or_error(load: Callable[[Job], Loaded], job: Job) -> Loaded | Exception:
    try:
        return load(job)
    except Exception as error:  # noqa: BLE001 - reported per video by the caller
        return error


def prefetched(
    load: Callable[[Job], Loaded], jobs: Sequence[Job], workers: int
) -> Iterator[tuple[int, Loaded | Exception]]:
    """``(i, load(jobs[i]))`` in order, or ``(i, the exception it raised)``; with ``workers``
    loader processes, up to ``workers * AHEAD_PER_WORKER`` videos are loaded ahead.

    ``load`` must be picklable (a module-level function or a ``functools.partial`` of one).
    """
    if workers <= 0:
        for i, job in enumerate(jobs):
            yield i, _load_or_error(load, job)
        return
    pool = loader_pool(workers)
    window: deque[tuple[int, Job, Future]] = deque()
    upcoming = iter(enumerate(jobs))

    def submit(i: int, job: Job) -> None:
        window.append((i, job, pool.submit(_load_or_error, load, job)))

    for i, job in itertools.islice(upcoming, workers * AHEAD_PER_WORKER):
        submit(i, job)
    try:
        while window:
            i, job, future = window.popleft()
            try:
                loaded = future.result()
            except BrokenProcessPool as error:
                # A loader process died (a decoder crash): that video fails, the pool is
                # replaced next task, and this task loads the rest here.
                loader_pool.cache_clear()
                yield i, error
                for j, other, pending in window:
                    pending.cancel()
                    yield j, _load_or_error(load, other)
                window.clear()
                for j, other in upcoming:
                    yield j, _load_or_error(load, other)
                return
            nxt = next(upcoming, None)
            if nxt is not None:
                submit(*nxt)
            yield i, loaded
    finally:
        for _, _, future in window:
            future.cancel()
