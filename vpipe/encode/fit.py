"""Fitting a codebook: sample train descriptors, fit PCA, run k-means, take the GMM statistics.

The sample is drawn uniformly without replacement from all per-step descriptors
(rows of :meth:`FeatureSet.sequence`, view 0) of the train videos only, so no
val/test content leaks into the codebook that later encodes them. Row counts come
from the index (clips × steps per clip), so only videos holding sampled rows are read.

The sample is explicit and capped (:data:`DEFAULT_SAMPLE_SIZE`, or ``--sample-size``):
k-means runs on every point of it (faiss's own 256-per-centroid subsampling is turned
off, see :mod:`vpipe.encode.kmeans`) and provenance reports descriptors per centroid.
It is held in memory once, in float32, and checked against the memory budget before
it is read; a sample that does not fit is refused rather than streamed, because a few
hundred descriptors per centroid already pin the centres down.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from vpipe.encode.budget import DEFAULT_MEMORY_BUDGET, check_budget
from vpipe.encode.codebook_io import Codebook
from vpipe.encode.gmm import column_variance, partition_gmm
from vpipe.encode.kmeans import fit_kmeans, import_faiss
from vpipe.encode.pca import fit_pca
from vpipe.errors import ConfigError, StageError
from vpipe.store.index_columns import steps_per_row

if TYPE_CHECKING:
    import pandas as pd

    from vpipe.store import FeatureSet

#: Default cap on the k-means sample (all train descriptors when there are fewer).
DEFAULT_SAMPLE_SIZE = 100_000


def descriptor_counts(features: FeatureSet, layer: str) -> pd.Series:
    """Descriptors each video's view 0 contributes to a sequence of ``layer``
    (per clip row, :func:`~vpipe.store.index_columns.steps_per_row`)."""
    steps = steps_per_row(features.directory, features.layers, features.index["layers"].unique(), layer)
    view0 = features.index[features.index["view"] == 0]
    return view0["layers"].map(steps).groupby(view0["video_id"]).sum()


def descriptor_dim(features: FeatureSet, layer: str) -> int:
    """D of ``layer``'s per-step descriptors, from the index alone (no shard is opened)."""
    descriptor_counts(features, layer)
    return int(json.loads(features.index["layers"].iloc[0])[layer]["shape"][-1])


def codebook_sample_size(total: int, sample_size: int | None) -> int:
    """Descriptors the codebook is fitted on, of ``total`` train descriptors: ``sample_size``
    or min(total, :data:`DEFAULT_SAMPLE_SIZE`)."""
    size = min(total, DEFAULT_SAMPLE_SIZE) if sample_size is None else sample_size
    if not 0 < size <= total:
        raise ConfigError(f"--sample-size must be between 1 and the {total} train descriptors, got {size}")
    return size


def train_descriptor_total(features: FeatureSet, video_ids: Sequence[str], layer: str) -> int:
    """Train descriptors available to the codebook sample, from the index alone."""
    per_video = descriptor_counts(features, layer)
    return int(per_video.reindex(list(video_ids)).fillna(0).sum())


def sample_descriptors(
    features: FeatureSet,
    video_ids: Sequence[str],
    *,
    sample_size: int | None,
    seed: int,
    layer: str = "pool",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    reserve_per_row: int = 0,
) -> np.ndarray:
    """``sample_size`` (default min(all, 100k)) float32 descriptors of ``video_ids``, view 0.

    ``reserve_per_row`` is what the caller will add per sampled row (e.g. its PCA
    projection), so the budget check covers the sample and what is derived from it.
    """
    if not video_ids:
        raise StageError(f"no train videos with features in {features.directory}: check the manifest's split column")
    per_video = descriptor_counts(features, layer)
    missing = [v for v in video_ids if v not in per_video.index]
    if missing:
        raise StageError(f"train video {missing[0]!r} has no view 0 in {features.directory}")
    counts = np.array([int(per_video[v]) for v in video_ids])
    total = int(counts.sum())
    size = codebook_sample_size(total, sample_size)
    dim = descriptor_dim(features, layer)
    check_budget(
        f"the k-means sample of {size} descriptors × {dim}",
        size * (4 * dim + reserve_per_row),
        memory_budget,
        "lower --sample-size (a few hundred descriptors per centroid are enough) or raise --memory-budget",
    )
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    first, last = np.searchsorted(chosen, starts[:-1]), np.searchsorted(chosen, starts[1:])
    sample = np.empty((size, dim), dtype=np.float32)
    for video_id, start, lo, hi in zip(video_ids, starts, first, last):
        if hi > lo:
            sequence = features.sequence(video_id, layer=layer, view=0)
            sample[lo:hi] = sequence[chosen[lo:hi] - start]
    return sample


#: ``--pca auto`` reduces only when the sample holds at least this many descriptors per
#: input dimension. Below that the sample covariance is poorly estimated (singular when
#: there are fewer descriptors than dimensions) and its leading axes follow noise: on the
#: synthetic set (784 train descriptors of 1024 dimensions) PCA to 512 cost the VLAD
#: baseline 7 of 42 test videos. UCF101 with LI3D (tens of thousands) is well above it.
AUTO_PCA_DESCRIPTORS_PER_DIM = 10


def resolve_pca(pca: int | str | None, dim: int, samples: int | None = None) -> int | None:
    """``"auto"`` -> D/2 (the iDT + FV papers' choice) when the codebook sample of ``samples``
    descriptors has at least :data:`AUTO_PCA_DESCRIPTORS_PER_DIM` per dimension, else no
    PCA; 0 or None -> no PCA; an integer is taken as given."""
    if pca == "auto":
        if samples is not None and samples < AUTO_PCA_DESCRIPTORS_PER_DIM * dim:
            return None
        return max(1, dim // 2)
    if pca in (None, 0):
        return None
    if not isinstance(pca, int) or not 1 <= pca <= dim:
        raise ConfigError(f"--pca must be auto, 0 (off) or between 1 and the descriptor dimension {dim}, got {pca!r}")
    return pca


def fit_codebook(
    features: FeatureSet,
    train_ids: Sequence[str],
    *,
    clusters: int = 128,
    sample_size: int | None = None,
    seed: int = 0,
    niter: int = 20,
    use_gpu: bool | None = None,
    layer: str = "pool",
    pca: int | str | None = None,
    whiten: bool = False,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> Codebook:
    """PCA (optional), k-means codebook and diagonal GMM from one train-only descriptor sample.

    ``pca`` is a target dimension, ``"auto"`` (D/2 when the sample is large enough, see
    :func:`resolve_pca`) or None. ``provenance`` records what
    was used (sample size, descriptors per centroid, PCA, objective, device, faiss
    version); the caller adds names and the fingerprint.
    """
    faiss = import_faiss()
    train_ids = list(train_ids)
    input_dim = descriptor_dim(features, layer)
    auto = pca == "auto" and train_ids  # only the automatic choice depends on the sample size
    samples = codebook_sample_size(train_descriptor_total(features, train_ids, layer), sample_size) if auto else None
    reduced = resolve_pca(pca, input_dim, samples)
    sample = sample_descriptors(
        features, train_ids, sample_size=sample_size, seed=seed, layer=layer, memory_budget=memory_budget,
        reserve_per_row=4 * reduced if reduced else 0,
    )  # fmt: skip
    projection = fit_pca(sample, reduced, whiten=whiten) if reduced else None
    pca_record = None
    if projection is not None:
        total_variance = float(column_variance(sample).sum()) * len(sample) / (len(sample) - 1)
        pca_record = {
            "dim": projection.dim,
            "whiten": whiten,
            "explained_variance_ratio": float(projection.explained_variance.sum()) / max(total_variance, 1e-300),
        }
        projected = np.empty((len(sample), reduced), dtype=np.float32)
        for start in range(0, len(sample), 8192):
            projected[start : start + 8192] = projection.project(sample[start : start + 8192])
        sample = projected
    result = fit_kmeans(sample, clusters, seed=seed, niter=niter, use_gpu=use_gpu)
    gmm = partition_gmm(sample, result.assignment, result.centroids)
    return Codebook(
        centroids=result.centroids,
        gmm_weights=gmm.weights.astype(np.float32),
        gmm_means=gmm.means.astype(np.float32),
        gmm_variances=gmm.variances.astype(np.float32),
        pca=projection,
        provenance={
            "clusters": clusters,
            "dim": int(sample.shape[1]),
            "input_dim": input_dim,
            "pca": pca_record,
            "layer": layer,
            "sample_size": len(sample),
            "descriptors_per_centroid": round(len(sample) / clusters, 1),
            "seed": seed,
            "niter": niter,
            "objective": result.objective,
            "init": result.init,
            "variance_floor": gmm.floor,
            "empty_cells": int((gmm.weights == 0).sum()),
            "train_videos": len(train_ids),
            "faiss_version": faiss.__version__,
            "device": result.device,
            "gmm": "hard statistics of the k-means partition",
        },
    )
