"""k-means with FAISS on exactly the sample it is given.

``faiss.Kmeans`` silently subsamples its input to ``max_points_per_centroid`` (256)
points per centroid, so a 100k-descriptor sample with K=128 would really be fitted on
32,768 points. We raise that cap to cover the whole sample, so the sample size that
provenance reports is the one that was used, and lower ``min_points_per_centroid``
to 1 so that small samples do not print warnings (K > sample is refused up front).

Centroids start from k-means++ seeding where the faiss build has it (1.11+): faiss's
default, K random points, regularly merges two true clusters into one cell and splits
another, which more iterations do not undo; k-means++ costs about two iterations.

faiss is imported on first use, not at import time: a base install without the ``cpu``
or ``gpu`` extra still runs every command that needs no k-means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from vpipe.errors import ConfigError, VpipeError

FAISS_MISSING = (
    "faiss is not installed: k-means needs it; install the extra that matches this machine, "
    "`pip install 'vpipe[cpu]'` or `pip install 'vpipe[gpu]'` (never both)"
)


class MissingFaissError(VpipeError):
    """faiss, an optional dependency, is needed and absent."""


def import_faiss() -> ModuleType:
    """The faiss module, or :class:`MissingFaissError` naming the extra to install."""
    try:
        import faiss
    except ImportError:
        raise MissingFaissError(FAISS_MISSING) from None
    return faiss


@dataclass
class KmeansResult:
    """Centroids, the sample's partition under them, and its objective."""

    centroids: np.ndarray
    assignment: np.ndarray
    #: Sum of squared distances of the sample to its nearest final centroid
    #: (scikit-learn's ``inertia_``; faiss's own last ``obj`` predates the final update).
    objective: float
    device: str
    init: str


def faiss_has_gpu() -> bool:
    """Whether this faiss build has GPU support and sees a GPU."""
    faiss = import_faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_gpu(use_gpu: bool | None) -> bool:
    """``None`` picks the GPU when torch sees CUDA and faiss can use it."""
    if use_gpu is None:
        import torch

        return torch.cuda.is_available() and faiss_has_gpu()
    if use_gpu and not faiss_has_gpu():
        raise ConfigError(
            "GPU k-means requested but this faiss build has no GPU support: install faiss-gpu or use --device cpu"
        )
    return use_gpu


def kmeans_plus_plus() -> int | None:
    """faiss's k-means++ seeding constant, None in builds older than 1.11."""
    return getattr(import_faiss(), "ClusteringInitMethod_KMEANS_PLUS_PLUS", None)


def kmeans_parameters(samples: int, clusters: int, *, seed: int, niter: int) -> dict[str, int]:
    """faiss ``ClusteringParameters`` that use every one of ``samples`` points."""
    parameters = {
        "niter": niter,
        "seed": seed,
        "max_points_per_centroid": math.ceil(samples / clusters),
        "min_points_per_centroid": 1,
    }
    init = kmeans_plus_plus()
    if init is not None:
        parameters["init_method"] = init
    return parameters


def assign(x: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of each row and the squared distance to it (exact, FAISS flat L2)."""
    index = import_faiss().IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids, dtype=np.float32))
    distances, labels = index.search(np.ascontiguousarray(x, dtype=np.float32), 1)
    return labels[:, 0].astype(np.int64), distances[:, 0]


def fit_kmeans(
    x: np.ndarray,
    clusters: int,
    *,
    seed: int,
    niter: int,
    use_gpu: bool | None = None,
    init_centroids: np.ndarray | None = None,
) -> KmeansResult:
    """Fit k-means to all rows of ``x`` (float32, (N, D)) with FAISS."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if clusters < 1:
        raise ConfigError(f"--clusters must be at least 1, got {clusters}")
    if clusters > len(x):
        raise ConfigError(
            f"--clusters {clusters} is larger than the sample of {len(x)} descriptors: lower K or raise --sample-size"
        )
    if niter < 1:
        raise ConfigError(f"--niter must be at least 1, got {niter}")
    gpu = resolve_gpu(use_gpu)
    kmeans = import_faiss().Kmeans(
        x.shape[1], clusters, gpu=gpu, **kmeans_parameters(len(x), clusters, seed=seed, niter=niter)
    )
    kmeans.train(x, init_centroids=init_centroids)
    labels, distances = assign(x, kmeans.centroids)
    return KmeansResult(
        centroids=kmeans.centroids.astype(np.float32),
        assignment=labels,
        objective=float(distances.astype(np.float64).sum()),
        device="gpu" if gpu else "cpu",
        init="given" if init_centroids is not None else "k-means++" if kmeans_plus_plus() is not None else "random",
    )
