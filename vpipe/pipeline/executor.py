"""Running per-item work: in this process, or as dask.distributed tasks.

Stages hand a picklable per-item function and its work items to an executor and get
outcomes back in completion order; they never see dask. The in-process executor is
the reference path (and what ``--workers 0`` selects); the dask executor submits the
same function, so both paths produce identical rows. The local cluster is started
only when there is work, so a run with nothing to do costs nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vpipe.errors import VpipeError

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


class Executor(Protocol):
    def map(
        self,
        fn: Callable,
        items: Sequence[WorkItem],
        *,
        stage: str,
        resources: dict[str, float] | None = None,
        chunk_size: int = 1,
        batched: bool = False,
    ) -> Iterator[Outcome]: ...

    def close(self) -> None: ...


def describe_error(error: BaseException) -> str:
    """One line: user errors carry their own message, others get their type name."""
    if isinstance(error, VpipeError):
        text = str(error)
    else:
        text = f"{type(error).__name__}: {error}"
    return " ".join(text.split())


def call_chunk(fn: Callable, payloads: list[Any], batched: bool) -> list[tuple[list[dict] | None, str, float]]:
    """Run a chunk of items in one task; what a dask task executes.

    A batched function takes all payloads at once (so a model can batch clips across
    videos) and returns, per payload, its rows or the exception that item raised.
    A whole-chunk exception fails every item of the chunk with the same reason.
    """
    _limit_threads_in_worker()
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


def chunked(items: Sequence[WorkItem], size: int) -> list[list[WorkItem]]:
    return [list(items[i : i + size]) for i in range(0, len(items), max(1, size))]


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


class InProcessExecutor:
    """Runs chunks one after the other in this process."""

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
        for chunk in chunked(items, chunk_size):
            for item, (rows, error, seconds) in zip(chunk, call_chunk(fn, [i.payload for i in chunk], batched)):
                yield Outcome(item, rows, error, seconds)

    def close(self) -> None:
        pass


class DaskExecutor:
    """Submits items as dask.distributed tasks to an existing or a local cluster."""

    def __init__(self, scheduler: str | None = None, workers: int | None = None):
        self.scheduler = scheduler
        self.workers = workers
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
        """Ask for a resource only if some worker has it; otherwise tasks would wait forever."""
        if not resources:
            return None
        offered = [w.get("resources", {}) for w in self.client.scheduler_info()["workers"].values()]
        wanted = {name: amount for name, amount in resources.items() if any(name in o for o in offered)}
        return wanted or None

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
        if not items:
            return
        from distributed import as_completed

        client = self.client
        wanted = self._supported(resources)
        token = uuid.uuid4().hex[:8]
        futures = {}
        for chunk in chunked(items, chunk_size):
            future = client.submit(
                call_chunk,
                fn,
                [item.payload for item in chunk],
                batched,
                key=f"{stage}-{chunk[0].key}-{len(chunk)}-{token}",
                pure=False,
                resources=wanted,
            )
            futures[future] = (chunk, time.perf_counter())
        try:
            for future in as_completed(futures):
                chunk, submitted = futures.pop(future)
                if future.status == "finished":
                    for item, (rows, error, seconds) in zip(chunk, future.result()):
                        yield Outcome(item, rows, error, seconds)
                else:
                    reason = describe_error(future.exception())
                    for item in chunk:
                        yield Outcome(item, None, reason, time.perf_counter() - submitted)
                future.release()
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def make_executor(scheduler: str | None = None, workers: int | None = None) -> Executor:
    """``workers == 0`` (and no scheduler) runs in-process; anything else uses dask."""
    if workers == 0 and not scheduler:
        return InProcessExecutor()
    return DaskExecutor(scheduler=scheduler, workers=workers)
