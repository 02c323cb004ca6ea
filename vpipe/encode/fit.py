"""Fitting a codebook: sample train descriptors, run k-means, take the GMM statistics.

The sample is drawn uniformly without replacement from all per-step descriptors
(rows of :meth:`FeatureSet.sequence`, view 0) of the train videos only, so no
val/test content leaks into the codebook that later encodes them. Row counts come
from the index (clips × steps per clip), so only videos holding sampled rows are read.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import faiss
import numpy as np
import pandas as pd

from vpipe.encode.codebook_io import Codebook
from vpipe.encode.gmm import partition_gmm
from vpipe.encode.kmeans import fit_kmeans
from vpipe.errors import ConfigError, StageError
from vpipe.store import FeatureSet

#: Default cap on the k-means sample (all train descriptors when there are fewer).
DEFAULT_SAMPLE_SIZE = 100_000


def descriptor_counts(features: FeatureSet, layer: str) -> pd.Series:
    """Descriptors each video's view 0 contributes to a sequence of ``layer``.

    A clip row of shape ``(τ, D)`` gives τ steps and a row ``(D,)`` gives one (τ may
    differ between shards); other shapes (spatial grids) are not descriptor sequences
    and are refused.
    """
    if layer not in features.layers:
        raise ConfigError(f"{features.directory} has no layer {layer!r}; it has {features.layers}")
    steps = {}
    for layers_json in features.index["layers"].unique():
        shape = json.loads(layers_json)[layer]["shape"]
        if len(shape) not in (1, 2):
            raise ConfigError(
                f"layer {layer!r} of {features.directory} has clip shape {shape}; encoding needs "
                f"per-step vectors (τ, D) or (D,): choose a pooled layer with --layer"
            )
        steps[layers_json] = 1 if len(shape) == 1 else int(shape[0])
    view0 = features.index[features.index["view"] == 0]
    return view0["layers"].map(steps).groupby(view0["video_id"]).sum()


def sample_descriptors(
    features: FeatureSet, video_ids: Sequence[str], *, sample_size: int | None, seed: int, layer: str = "pool"
) -> np.ndarray:
    """``sample_size`` (default min(all, 100k)) float32 descriptors of ``video_ids``, view 0."""
    if not video_ids:
        raise StageError(f"no train videos with features in {features.directory}: check the manifest's split column")
    per_video = descriptor_counts(features, layer)
    missing = [v for v in video_ids if v not in per_video.index]
    if missing:
        raise StageError(f"train video {missing[0]!r} has no view 0 in {features.directory}")
    counts = np.array([int(per_video[v]) for v in video_ids])
    total = int(counts.sum())
    size = min(total, DEFAULT_SAMPLE_SIZE) if sample_size is None else sample_size
    if not 0 < size <= total:
        raise ConfigError(f"--sample-size must be between 1 and the {total} train descriptors, got {size}")
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    first, last = np.searchsorted(chosen, starts[:-1]), np.searchsorted(chosen, starts[1:])
    parts = []
    for video_id, start, lo, hi in zip(video_ids, starts, first, last):
        if hi > lo:
            sequence = features.sequence(video_id, layer=layer, view=0)
            parts.append(sequence[chosen[lo:hi] - start].astype(np.float32))
    return np.concatenate(parts)


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
) -> Codebook:
    """k-means codebook and diagonal GMM from a train-only descriptor sample.

    ``provenance`` records what was used (sample size, objective, device, faiss
    version); the caller adds names and the fingerprint.
    """
    sample = sample_descriptors(features, list(train_ids), sample_size=sample_size, seed=seed, layer=layer)
    result = fit_kmeans(sample, clusters, seed=seed, niter=niter, use_gpu=use_gpu)
    gmm = partition_gmm(sample, result.assignment, result.centroids)
    return Codebook(
        centroids=result.centroids,
        gmm_weights=gmm.weights.astype(np.float32),
        gmm_means=gmm.means.astype(np.float32),
        gmm_variances=gmm.variances.astype(np.float32),
        provenance={
            "clusters": clusters,
            "dim": int(sample.shape[1]),
            "layer": layer,
            "sample_size": int(len(sample)),
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
