"""Running per-item work: in this process, or as dask.distributed tasks.

Stages hand a picklable per-item function and its work items to an executor and get
outcomes back in completion order; they never see dask. The in-process executor is
the reference path (and what ``--workers 0`` selects); the dask executor submits the
same function, so both paths produce identical rows. The local cluster is started
only when there is work, so a run with nothing to do costs nothing.

At Kinetics scale (hundreds of thousands of items) two costs dominate a naive
submit-everything loop: the driver holds every pending future (~13 KB each), and a
task per cheap item (probe one video) costs more in scheduling than in work. So the
dask executor keeps only a window of a few tasks per worker thread in flight, and
packs cheap items several to a task while keeping outcomes per item.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from itertools import islice
from typing import Any

from vpipe.errors import ConfigError, VpipeError
from vpipe.pipeline.cluster import ClusterSpec, start_cluster
from vpipe.pipeline.notices import Raised, notice, recording

log = logging.getLogger(__name__)

ItemFn = Callable[[Any], list[dict]]


@dataclass(frozen=True)
class WorkItem:
    """One unit of per-item work: usually one video."""

    key: str
    fingerprint: str
    payload: Any
    path: str = ""


@dataclass(frozen=True)
class Outcome:
    item: WorkItem
    rows: list[dict] | None
    error: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.rows is not None


def describe_error(error: BaseException) -> str:
    """One line: user errors carry their own message, others get their type name."""
    if isinstance(error, VpipeError):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(text.split())


ChunkResults = list[tuple[list[dict] | None, str, float]]


def call_chunk(fn: Callable, payloads: list[Any], batched: bool) -> tuple[ChunkResults, list[Raised]]:
    """Run a chunk of items in one task; what a dask task executes.

    A batched function takes all payloads at once (so a model can batch clips across
    videos) and returns, per payload, its rows or the exception that item raised.
    A whole-chunk exception fails every item of the chunk with the same reason.
    The warnings the items raised come back with the results, for the driver to show
    once per run (:mod:`vpipe.pipeline.notices`), instead of printing in the worker.
    """
    _limit_threads_in_worker()
    with recording() as raised:
        results = _run_chunk(fn, payloads, batched)
    return results, raised


def _run_chunk(fn: Callable, payloads: list[Any], batched: bool) -> ChunkResults:
    if not batched:
        results = []
        for payload in payloads:
            start = time.perf_counter()
            try:
                rows = fn(payload)
            except Exception as error:  # noqa: BLE001 - recorded per item, never fatal
                results.append((None, describe_error(error), time.perf_counter() - start))
            else:
                results.append((rows, "", time.perf_counter() - start))
        return results
    start = time.perf_counter()
    try:
        outputs = fn(payloads)
    except Exception as error:  # noqa: BLE001
        reason = describe_error(error)
        return [(None, reason, 0.0)] * len(payloads)
    each = (time.perf_counter() - start) / max(1, len(payloads))
    return [
        (None, describe_error(out), each) if isinstance(out, BaseException) else (out, "", each) for out in outputs
    ]


def chunked(items: Iterable[WorkItem], size: int) -> Iterator[list[WorkItem]]:
    """Consecutive chunks of ``size`` items, made lazily so only submitted ones exist."""
    iterator = iter(items)
    while chunk := list(islice(iterator, max(1, size))):
        yield chunk


#: Tasks in flight per worker thread: enough that no thread waits for the driver, few
#: enough that driver memory does not grow with the number of items.
TASKS_PER_THREAD = 4
#: How often the window follows workers joining or leaving (a batch-system cluster scaling).
WINDOW_REFRESH_SECONDS = 2.0
#: Most items packed into one task of a non-batched stage.
MAX_ITEMS_PER_TASK = 64


def items_per_task(count: int, threads: int, chunk_size: int, batched: bool) -> int:
    """How many items one task carries.

    A batched stage's chunk is its batch (videos per shard), kept as given. Other
    stages get up to :data:`MAX_ITEMS_PER_TASK` items per task, fewer when that would
    leave threads idle: at least ``2 * TASKS_PER_THREAD`` tasks per thread remain, so a
    slow item holds back little and a killed worker loses little.
    """
    if batched:
        return max(1, chunk_size)
    spread = count // max(1, 2 * TASKS_PER_THREAD * threads)
    return max(1, chunk_size, min(MAX_ITEMS_PER_TASK, spread))


def _limit_threads_in_worker() -> None:
    """One BLAS/torch thread per worker thread, or workers oversubscribe the cores."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    if "torch" in sys.modules:
        import torch

        threads = max(1, int(worker.state.nthreads))
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


@dataclass(frozen=True)
class Tasks:
    """How one stage's items become tasks: what :meth:`Executor.map` takes besides the items."""

    stage: str
    resources: dict[str, float] | None = None
    chunk_size: int = 1
    batched: bool = False


#: A chunk whose task ended: its items, each item's result, and the warnings they raised.
FinishedChunk = tuple[list[WorkItem], ChunkResults, list[Raised]]


class Executor(ABC):
    """Runs a stage's per-item function over its work items, a chunk of items per task.

    An executor says only where chunks run (:meth:`_finished_chunks`); :meth:`map` turns
    any executor's finished chunks into per-item outcomes and shows the items' warnings,
    so the in-process reference path and the dask path cannot drift apart.
    """

    def map(
        self,
        fn: Callable,
        items: Sequence[WorkItem],
        *,
        stage: str,
        resources: dict[str, float] | None = None,
        chunk_size: int = 1,
        batched: bool = False,
    ) -> Iterator[Outcome]:
        """Each item's outcome, in the order its chunk finished."""
        tasks = Tasks(stage, resources, chunk_size, batched)
        with closing(self._finished_chunks(fn, items, tasks)) as finished:
            for chunk, results, raised in finished:
                notice(stage, raised)
                for item, (rows, error, seconds) in zip(chunk, results):
                    yield Outcome(item, rows, error, seconds)

    @abstractmethod
    def _finished_chunks(self, fn: Callable, items: Sequence[WorkItem], tasks: Tasks) -> Iterator[FinishedChunk]:
        """Run ``items`` in chunks; yield each chunk as its task ends. Closing the iterator
        cancels the tasks not yet finished."""

    def close(self) -> None:
        """Release the workers this executor started."""


class InProcessExecutor(Executor):
    """Runs chunks one after the other in this process."""

    def _finished_chunks(self, fn: Callable, items: Sequence[WorkItem], tasks: Tasks) -> Iterator[FinishedChunk]:
        for chunk in chunked(items, tasks.chunk_size):
            yield chunk, *call_chunk(fn, [i.payload for i in chunk], tasks.batched)


class DaskExecutor(Executor):
    """Submits items as dask.distributed tasks to an existing, a batch-system or a local cluster."""

    def __init__(
        self, scheduler: str | None = None, workers: int | None = None, cluster: ClusterSpec | None = None
    ):
        self.scheduler = scheduler
        self.workers = workers
        self.cluster = cluster
        self._client = None
        self._cluster = None

    @property
    def client(self):
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _connect(self):
        import dask
        from distributed import Client, LocalCluster

        if not log.isEnabledFor(logging.INFO):
            logging.getLogger("distributed").setLevel(logging.ERROR)

        if self.scheduler:
            log.info("connecting to dask scheduler %s", self.scheduler)
            try:
                return Client(self.scheduler, timeout="20s")
            except OSError as error:
                raise VpipeError(
                    f"cannot reach dask scheduler {self.scheduler}: {error}; check the address, "
                    "or drop --scheduler to use a local cluster"
                ) from error
        if self.cluster is not None:
            log.info("submitting up to %d %s worker jobs", self.cluster.jobs, self.cluster.system)
            self._cluster = start_cluster(self.cluster)
            return Client(self._cluster)
        workers = self.workers or os.cpu_count() or 1
        log.info("starting a local dask cluster with %d worker processes", workers)
        # Non-daemonic workers may start processes of their own (decoding DataLoaders).
        dask.config.set({"distributed.worker.daemon": False})
        self._cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        return Client(self._cluster)

    def _supported(self, resources: dict[str, float] | None) -> dict[str, float] | None:
        """Ask for a resource only if some worker has it, or a queued batch job will offer it;
        otherwise tasks would wait forever."""
        if not resources:
            return None
        offered = [w.get("resources", {}) for w in self.client.scheduler_info()["workers"].values()]
        if self.cluster is not None and self.cluster.gpus_per_job:
            offered.append({"GPU": self.cluster.gpus_per_job})
        wanted = {name: amount for name, amount in resources.items() if any(name in o for o in offered)}
        return wanted or None

    def _finished_chunks(self, fn: Callable, items: Sequence[WorkItem], tasks: Tasks) -> Iterator[FinishedChunk]:
        if not items:
            return
        from distributed import as_completed

        client = self.client
        wanted = self._supported(tasks.resources)
        threads = self._threads(wanted)
        size = items_per_task(len(items), threads, tasks.chunk_size, tasks.batched)
        token = uuid.uuid4().hex[:8]
        chunks = chunked(items, size)
        pending: dict[Any, tuple[list[WorkItem], float]] = {}
        flowing = as_completed()
        checked = time.monotonic()

        def top_up() -> None:
            for chunk in islice(chunks, max(0, TASKS_PER_THREAD * threads - len(pending))):
                future = client.submit(
                    call_chunk,
                    fn,
                    [item.payload for item in chunk],
                    tasks.batched,
                    key=f"{tasks.stage}-{chunk[0].key}-{len(chunk)}-{token}",
                    pure=False,
                    resources=wanted,
                )
                pending[future] = (chunk, time.perf_counter())
                flowing.add(future)

        top_up()
        try:
            for future in flowing:
                chunk, submitted = pending.pop(future)
                if time.monotonic() - checked > WINDOW_REFRESH_SECONDS:
                    threads, checked = self._threads(wanted), time.monotonic()
                top_up()
                if future.status == "finished":
                    yield chunk, *future.result()
                else:
                    reason = describe_error(future.exception())
                    yield chunk, [(None, reason, time.perf_counter() - submitted)] * len(chunk), []
                future.release()
        finally:
            for future in pending:
                future.cancel()

    def _threads(self, resources: dict[str, float] | None) -> int:
        """Worker threads that can run this stage's tasks; for a batch-system cluster at
        least those of all its jobs, which may still be queued when the stage starts
        (a window sized for no workers would keep dask from asking for more jobs)."""
        workers = self.client.scheduler_info()["workers"].values()
        usable = [w for w in workers if all(w.get("resources", {}).get(r, 0) >= n for r, n in (resources or {}).items())]
        planned = self.cluster.threads if self.cluster is not None else 1
        return max(planned, sum(int(w.get("nthreads", 1)) for w in usable))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def make_executor(
    scheduler: str | None = None, workers: int | None = None, cluster: ClusterSpec | None = None
) -> Executor:
    """``workers == 0`` (and no scheduler or cluster) runs in-process; anything else uses dask."""
    if scheduler and cluster is not None:
        raise ConfigError("--scheduler and --cluster both choose the workers: give one of them")
    if workers == 0 and not scheduler and cluster is None:
        return InProcessExecutor()
    return DaskExecutor(scheduler=scheduler, workers=workers, cluster=cluster)
