"""PCA of descriptors before the codebook, as the improved-trajectory + Fisher-vector
literature does (Sánchez, Perronnin, Mensink & Verbeek 2013; Wang & Schmid 2013).

Two reasons it helps the classic encodings: the Fisher vector's GMM is diagonal, and a
rotation onto the principal axes decorrelates the dimensions it treats as independent;
and VLAD / FV grow as K·D, so halving D halves their size, their encoding time and the
baseline's cost. The projection is fitted on the same train-only descriptor sample as
k-means, so no test content shapes it.

Whitening (dividing each component by its standard deviation) is optional and off by
default: the papers above report PCA without it, and whitening inflates the
low-variance, mostly-noise components to the weight of the leading ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vpipe.errors import ConfigError

#: Added to eigenvalues before whitening, relative to the largest, so that a
#: (near-)constant component is not divided by zero.
WHITEN_EPS = 1e-6


@dataclass
class Pca:
    """``project(x) = ((x - mean) @ components.T) * scale``; ``scale`` is 1 without whitening."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    scale: np.ndarray

    @property
    def input_dim(self) -> int:
        return int(self.components.shape[1])

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def whiten(self) -> bool:
        return bool(np.any(self.scale != 1))

    def project(self, x: np.ndarray) -> np.ndarray:
        """Rows of ``x`` (N, input_dim) in the principal subspace (N, dim), float64."""
        return ((np.asarray(x, dtype=np.float64) - self.mean) @ self.components.T) * self.scale


def fit_pca(x: np.ndarray, dim: int, *, whiten: bool = False) -> Pca:
    """The ``dim`` leading principal axes of the rows of ``x``, signs fixed for reproducibility.

    The covariance is accumulated in float64 in row blocks, so the sample is never
    copied whole in float64; its eigendecomposition is D×D, cheap for D ≤ a few thousand.
    """
    n, d = x.shape
    if not 1 <= dim <= d:
        raise ConfigError(f"--pca must be between 1 and the descriptor dimension {d}, got {dim}")
    if n < 2:
        raise ConfigError(f"PCA needs at least 2 train descriptors, got {n}: lower --pca or add train videos")
    mean = np.zeros(d)
    for start in range(0, n, 8192):
        mean += x[start : start + 8192].astype(np.float64).sum(axis=0)
    mean /= n
    covariance = np.zeros((d, d))
    for start in range(0, n, 8192):
        block = x[start : start + 8192].astype(np.float64) - mean
        covariance += block.T @ block
    covariance /= n - 1
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    order = np.argsort(eigenvalues)[::-1][:dim]
    components = eigenvectors[:, order].T
    signs = np.sign(components[np.arange(dim), np.abs(components).argmax(axis=1)])
    components *= np.where(signs == 0, 1.0, signs)[:, None]
    variance = np.maximum(eigenvalues[order], 0.0)
    scale = 1.0 / np.sqrt(variance + WHITEN_EPS * max(float(variance[0]), np.finfo(np.float64).tiny)) if whiten else np.ones(dim)
    return Pca(mean=mean, components=components, explained_variance=variance, scale=scale)
