"""Diagonal-GMM statistics for Fisher vectors, taken from the k-means partition.

We use hard statistics of the final partition rather than EM
(``GaussianMixture(covariance_type="diag")`` initialised from the centroids):

- the GMM then describes the same cells as the codebook that BoF and VLAD use, so
  the three classic encodings are built on one partition and differ only in the
  statistics they keep (count, residual, and first/second order gradients);
- it is exact, deterministic and one pass over the sample, where EM on 100k × 1024 ×
  128 costs several k-means runs on CPU and its posteriors are nearly hard anyway in
  1024 dimensions;
- a cell with one point (or a dimension that is constant inside a cell, common after
  ReLU pooling) has zero variance; the floor keeps ``1/σ²`` finite.

Weights are cell frequencies ``n_k / N``. A cell left empty by the final assignment
keeps weight 0, its centroid as mean and the global variance; Fisher encoding gives
it a zero block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Variance floor, as a fraction of the sample's mean per-dimension variance.
VARIANCE_FLOOR = 1e-3


@dataclass
class DiagonalGmm:
    weights: np.ndarray
    means: np.ndarray
    variances: np.ndarray
    floor: float


def column_variance(x: np.ndarray, block: int = 8192) -> np.ndarray:
    """Per-column ML variance of ``x`` in float64, accumulated in row blocks so that a
    large float32 sample is never copied whole in float64 (two passes: mean, then spread)."""
    mean = np.zeros(x.shape[1])
    for start in range(0, len(x), block):
        mean += x[start : start + block].astype(np.float64).sum(axis=0)
    mean /= len(x)
    spread = np.zeros(x.shape[1])
    for start in range(0, len(x), block):
        spread += ((x[start : start + block].astype(np.float64) - mean) ** 2).sum(axis=0)
    return spread / len(x)


def variance_floor(x: np.ndarray) -> float:
    """The absolute variance floor for sample ``x``."""
    return max(VARIANCE_FLOOR * float(column_variance(x).mean()), np.finfo(np.float32).tiny)


def partition_gmm(x: np.ndarray, assignment: np.ndarray, centroids: np.ndarray) -> DiagonalGmm:
    """Per-cell weight, mean and floored diagonal variance (ML, ddof=0) of ``x``."""
    clusters = centroids.shape[0]
    spread = column_variance(x)
    floor = max(VARIANCE_FLOOR * float(spread.mean()), np.finfo(np.float32).tiny)
    global_var = np.maximum(spread, floor)
    order = np.argsort(assignment, kind="stable")
    bounds = np.searchsorted(assignment[order], np.arange(clusters + 1))
    weights = np.diff(bounds) / len(x)
    means = centroids.astype(np.float64).copy()
    variances = np.tile(global_var, (clusters, 1))
    for k in range(clusters):
        members = x[order[bounds[k] : bounds[k + 1]]].astype(np.float64)
        if len(members):
            means[k] = members.mean(axis=0)
            variances[k] = np.maximum(members.var(axis=0), floor)
    return DiagonalGmm(weights=weights, means=means, variances=variances, floor=floor)
