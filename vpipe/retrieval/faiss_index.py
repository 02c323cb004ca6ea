"""FAISS indexes over L2-normalised vectors: which kind for which size, build, search.

Cosine similarity is the inner product of unit vectors, so every index uses the
inner-product metric on vectors normalised before they arrive here. Below
:data:`FLAT_MAX` vectors an exact (flat) index answers a query in milliseconds and
needs no training, so approximation would buy nothing; above it an inverted-file
index (IVF) visits only the ``nprobe`` nearest of ``nlist`` cells. When the vectors
themselves would take more than :data:`FLAT_BYTES_MAX` of memory, the cells store
product-quantised codes (IVF-PQ) instead, and 8-bit scalar-quantised copies (a
quarter of float32) re-rank the ``k_factor·k`` best PQ candidates: PQ codes alone
cannot order the near neighbours within a tight cluster (recall@10 of 0.4 without
re-ranking on the tests' clustered data, 0.87 with it).

An approximate index's recall is not a property of its parameters alone but of the
data, so it is measured at build time: held-out gallery vectors are searched both
exactly and through the index, and ``nprobe`` (then, for IVF-PQ, ``k_factor``) is
doubled until recall@10 reaches :data:`TARGET_RECALL` or cannot grow. The measured
figure is what the index metadata reports as expected recall.

``import faiss`` happens inside the functions, so that a base install without
faiss still imports the command line.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vpipe.errors import ConfigError

#: Up to this many vectors, exact search.
FLAT_MAX = 50_000
#: Above this many bytes of float32 vectors, IVF cells hold PQ codes instead.
FLAT_BYTES_MAX = 2 << 30
#: recall@10 against exact search that the nprobe tuning aims for.
TARGET_RECALL = 0.95
#: Held-out queries used to measure recall at build time.
RECALL_QUERIES = 200
#: Training points per IVF cell: faiss warns below 39; more buys little.
TRAIN_PER_CELL = 40
#: Largest re-ranking depth factor tried for IVF-PQ.
MAX_K_FACTOR = 64


@dataclass
class IndexPlan:
    """The kind of index and its parameters (``nprobe`` is filled in by tuning)."""

    kind: str
    params: dict[str, int] = field(default_factory=dict)

    def factory(self, dim: int) -> str:
        """The ``faiss.index_factory`` string of this plan."""
        if self.kind == "flat":
            return "Flat"
        if self.kind == "ivf-flat":
            return f"IVF{self.params['nlist']},Flat"
        return f"IVF{self.params['nlist']},PQ{self.params['m']}x{self.params['nbits']},Refine(SQ8)"


def plan_index(count: int, dim: int, *, exact: bool = False) -> IndexPlan:
    """Flat below :data:`FLAT_MAX` vectors (or when ``exact``), IVF-Flat, then IVF-PQ above.

    ``nlist`` = 2·√N cells keeps both the cell count and the cell size near √N, the
    usual balance between coarse-quantiser cost and scanned vectors. PQ codes use
    ``m`` 8-bit subquantisers, ``m`` the largest divisor of dim up to min(dim/8, 64):
    at most one byte per 8 dimensions (1/32 of float32), and at most 64 bytes per
    vector, the largest code GPU IVF-PQ takes for every dimension.
    """
    if exact or count < FLAT_MAX:
        return IndexPlan("flat")
    nlist = max(16, int(2 * math.sqrt(count)))
    if count * dim * 4 <= FLAT_BYTES_MAX:
        return IndexPlan("ivf-flat", {"nlist": nlist})
    m = max(d for d in range(1, max(1, min(dim // 8, 64)) + 1) if dim % d == 0)
    return IndexPlan("ivf-pq", {"nlist": nlist, "m": m, "nbits": 8, "k_factor": 16})


def use_gpu(device: str) -> bool:
    """``auto`` uses a GPU when faiss sees one; ``cuda`` requires one; ``cpu`` never."""
    import faiss

    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"--device must be one of auto, cpu, cuda, got {device!r}")
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if device == "cuda" and not gpus:
        raise ConfigError(
            "--device cuda asked for, but this faiss build sees no GPU; use --device cpu or install faiss-gpu"
        )
    return device != "cpu" and gpus > 0


def build(vectors: np.ndarray, plan: IndexPlan, *, gpu: bool, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Build the planned index over ``vectors`` (row i gets id i); return it and a build report.

    IVF quantisers train on a seeded sample of ``TRAIN_PER_CELL·nlist`` vectors, so
    training time does not grow with the gallery. With ``gpu`` the coarse k-means runs
    on the GPU (faiss's ``clustering_index`` hook, which every IVF variant honours);
    the index itself stays a CPU index, because it is stored, and searched with
    selectors and re-ranking, on the CPU.
    """
    import faiss

    x = np.ascontiguousarray(vectors, dtype=np.float32)
    start = time.perf_counter()
    index = faiss.index_factory(x.shape[1], plan.factory(x.shape[1]), faiss.METRIC_INNER_PRODUCT)
    report: dict[str, Any] = {"device": "cpu", "faiss_version": faiss.__version__}
    if plan.kind != "flat":
        ivf = faiss.extract_index_ivf(index)
        if plan.kind == "ivf-pq":
            # The factory turns on polysemous training (Hamming-distance filtering), which
            # inner-product search never uses and which took 30x the rest of training.
            faiss.downcast_index(index.base_index).do_polysemous_training = False
        if gpu:
            resources = faiss.StandardGpuResources()
            ivf.clustering_index = faiss.index_cpu_to_gpu(resources, 0, faiss.IndexFlatL2(x.shape[1]))
            report["device"] = "cuda"
        rng = np.random.default_rng(seed)
        sample = min(len(x), TRAIN_PER_CELL * plan.params["nlist"])
        rows = np.sort(rng.choice(len(x), size=sample, replace=False)) if sample < len(x) else slice(None)
        index.train(x[rows])
        ivf.clustering_index = None
        report["train_vectors"] = int(sample)
    index.add(x)
    report["build_seconds"] = round(time.perf_counter() - start, 3)
    return index, report


def exact_top(gallery: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k best inner products per query, best first, by brute force over gallery blocks."""
    best_scores = np.empty((len(queries), 0), dtype=np.float32)
    best_ids = np.empty((len(queries), 0), dtype=np.int64)
    block = max(1, (64 << 20) // (4 * max(1, len(queries))))
    for begin in range(0, len(gallery), block):
        part = queries @ gallery[begin : begin + block].T
        part_ids = np.broadcast_to(np.arange(begin, begin + part.shape[1]), part.shape)
        scores = np.concatenate([best_scores, part], axis=1)
        ids = np.concatenate([best_ids, part_ids], axis=1)
        if scores.shape[1] > k:
            keep = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            scores, ids = np.take_along_axis(scores, keep, axis=1), np.take_along_axis(ids, keep, axis=1)
        best_scores, best_ids = scores, ids
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, axis=1)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k that the index also returned."""
    hits = [len(set(f[f >= 0].tolist()) & set(t.tolist())) for f, t in zip(found, truth)]
    return float(np.sum(hits) / truth.size) if truth.size else 1.0


def tune_search(index: Any, vectors: np.ndarray, plan: IndexPlan, *, k: int = 10, seed: int = 0) -> dict[str, Any]:
    """Set the smallest power-of-two ``nprobe`` (then ``k_factor``) reaching :data:`TARGET_RECALL`.

    Queries are gallery vectors with a little noise, so that a query is not trivially
    its own nearest neighbour, which would flatter recall. Returns the recall reached.
    """
    if plan.kind == "flat":
        return {"expected_recall_at_10": 1.0, "recall_queries": 0}
    rng = np.random.default_rng(seed + 1)
    chosen = rng.choice(len(vectors), size=min(RECALL_QUERIES, len(vectors)), replace=False)
    noise = rng.normal(scale=0.05 / math.sqrt(vectors.shape[1]), size=(len(chosen), vectors.shape[1]))
    queries = normalise(vectors[chosen] + noise)
    truth = exact_top(vectors, queries, k)
    params = plan.params
    params["nprobe"] = 1

    def measure() -> float:
        return recall_at(search(index, queries, k, kind=plan.kind, params=params)[1], truth)

    recall = measure()
    while recall < TARGET_RECALL and params["nprobe"] < params["nlist"]:
        params["nprobe"] = min(params["nlist"], params["nprobe"] * 2)
        recall = measure()
    while plan.kind == "ivf-pq" and recall < TARGET_RECALL and params["k_factor"] < MAX_K_FACTOR:
        params["k_factor"] *= 2
        recall = measure()
    return {"expected_recall_at_10": round(recall, 4), "recall_queries": len(chosen)}


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (all-zero rows stay zero), as float32."""
    x = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def search(
    index: Any, queries: np.ndarray, k: int, *, kind: str, params: dict[str, int], allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, ids)`` of the k best rows per query, among ``allowed`` ids if given.

    Filtering happens inside faiss (an ``IDSelectorBatch``), so asking for train
    videos only still returns k of them, however few the gallery holds. ``params``
    are the index's tuned ``nprobe`` / ``k_factor``; missing results have id -1.
    """
    import faiss

    x = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    selector = None if allowed is None else faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
    if kind == "flat":
        return index.search(x, min(k, index.ntotal), params=faiss.SearchParameters(sel=selector))
    ivf = faiss.SearchParametersIVF(sel=selector, nprobe=int(params["nprobe"]))
    if kind == "ivf-flat":
        return index.search(x, min(k, index.ntotal), params=ivf)
    refine = faiss.IndexRefineSearchParameters(k_factor=float(params["k_factor"]), base_index_params=ivf)
    return index.search(x, min(k, index.ntotal), params=refine)
