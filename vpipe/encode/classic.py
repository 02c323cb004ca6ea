"""The traditional encodings of a video's descriptors against a codebook: BoF, VLAD, FV.

These are the hard-assignment baselines that the soft aggregation heads
(soft-BoF / soft-VLAD / soft-FV) are compared with. Each takes ``(T, D)`` descriptors
and returns one float32 vector:

- BoF: the histogram of nearest centroids, L1-normalised, i.e. the word-frequency
  vector of the paper's Algorithm 1 (dimension K).
- VLAD: per-cell sums of residuals ``x - c_k`` (Algorithm 3), each cell's block
  L2-normalised ("intra-normalisation", Arandjelović & Zisserman 2013, which stops a
  few bursty cells from dominating), then the whole vector L2-normalised (K·D).
- FV: the improved Fisher vector (Perronnin, Sánchez & Mensink 2010): gradients of
  the log-likelihood w.r.t. the GMM means and standard deviations, normalised by the
  Fisher information, then signed square root and L2 (2·K·D). Weight gradients are
  left out, as in the improved FV, because they carry little beyond BoF.

Descriptors first go through the codebook's PCA when it has one
(:meth:`Codebook.project`). Computation is float64 so that a video's vector does not
depend on summation order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from vpipe.encode.codebook_io import Codebook

METHODS = ("bof", "vlad", "fv")


def _nearest(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid of each row (squared L2, ties to the lower index)."""
    d2 = (x * x).sum(1)[:, None] - 2.0 * x @ centroids.T + (centroids * centroids).sum(1)[None, :]
    return d2.argmin(axis=1)


def _l2(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v


def _descriptors(descriptors: np.ndarray, codebook: Codebook) -> np.ndarray:
    return codebook.project(descriptors)


def encode_bof(descriptors: np.ndarray, codebook: Codebook) -> np.ndarray:
    """L1-normalised histogram of nearest centroids, shape (K,)."""
    x = _descriptors(descriptors, codebook)
    counts = np.bincount(_nearest(x, codebook.centroids.astype(np.float64)), minlength=codebook.clusters)
    total = counts.sum()
    return (counts / total if total else counts.astype(np.float64)).astype(np.float32)


def encode_vlad(descriptors: np.ndarray, codebook: Codebook) -> np.ndarray:
    """Intra- then globally L2-normalised residual sums, shape (K·D,), cell-major."""
    x = _descriptors(descriptors, codebook)
    centroids = codebook.centroids.astype(np.float64)
    nearest = _nearest(x, centroids)
    residuals = np.zeros_like(centroids)
    np.add.at(residuals, nearest, x - centroids[nearest])
    norms = np.linalg.norm(residuals, axis=1, keepdims=True)
    residuals = np.divide(residuals, norms, out=np.zeros_like(residuals), where=norms > 0)
    return _l2(residuals.ravel()).astype(np.float32)


def gmm_posteriors(x: np.ndarray, codebook: Codebook) -> np.ndarray:
    """Soft assignments γ_t(k) of each row to each Gaussian, shape (T, K)."""
    means = codebook.gmm_means.astype(np.float64)
    precision = 1.0 / codebook.gmm_variances.astype(np.float64)
    with np.errstate(divide="ignore"):
        log_weights = np.log(codebook.gmm_weights.astype(np.float64))
    mahalanobis = (x * x) @ precision.T - 2.0 * x @ (means * precision).T + (means * means * precision).sum(1)
    log_det = np.log(codebook.gmm_variances.astype(np.float64)).sum(1)
    log_p = log_weights - 0.5 * (mahalanobis + log_det + x.shape[1] * np.log(2 * np.pi))
    log_p -= log_p.max(axis=1, keepdims=True)
    p = np.exp(log_p)
    return p / p.sum(axis=1, keepdims=True)


def encode_fisher(descriptors: np.ndarray, codebook: Codebook) -> np.ndarray:
    """Improved Fisher vector ``[G_μ; G_σ]``, shape (2·K·D,), each block cell-major."""
    x = _descriptors(descriptors, codebook)
    gamma = gmm_posteriors(x, codebook)
    weights = codebook.gmm_weights.astype(np.float64)
    means = codebook.gmm_means.astype(np.float64)
    sigma = np.sqrt(codebook.gmm_variances.astype(np.float64))
    scale = np.divide(1.0, len(x) * np.sqrt(weights), out=np.zeros_like(weights), where=weights > 0)[:, None]
    g0 = gamma.sum(0)[:, None]
    g1 = gamma.T @ x
    g2 = gamma.T @ (x * x)
    grad_mu = scale * (g1 - g0 * means) / sigma
    grad_sigma = scale / np.sqrt(2.0) * ((g2 - 2.0 * means * g1 + g0 * means * means) / sigma**2 - g0)
    fv = np.concatenate([grad_mu.ravel(), grad_sigma.ravel()])
    return _l2(np.sign(fv) * np.sqrt(np.abs(fv))).astype(np.float32)


ENCODERS: dict[str, Callable[[np.ndarray, Codebook], np.ndarray]] = {
    "bof": encode_bof,
    "vlad": encode_vlad,
    "fv": encode_fisher,
}


def encoding_dim(method: str, codebook: Codebook) -> int:
    """Length of the vector that ``method`` produces with ``codebook``."""
    return method_dim(method, codebook.clusters, codebook.dim)


def method_dim(method: str, clusters: int, dim: int) -> int:
    """Length of ``method``'s vector for K = ``clusters`` centres of ``dim`` values."""
    return {"bof": 1, "vlad": dim, "fv": 2 * dim}[method] * clusters
