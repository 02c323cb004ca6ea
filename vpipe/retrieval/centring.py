"""Centring, and optionally PCA-whitening, fitted on the gallery and applied to every query.

Features of random-weight or early-layer backbones share a large common component:
every unit vector lies near the same direction, so raw cosines all sit near 1 and a
ranking is decided by rounding noise. Subtracting the gallery mean removes that
component; cosine is then taken between what distinguishes the videos.

With ``whiten``, the centred vectors are also projected onto the gallery's principal
axes and each axis divided by its standard deviation (PCA-whitening, the standard
post-processing of NetVLAD-style retrieval vectors: Jégou & Chum, ECCV 2012), so that
frequent, correlated directions no longer dominate the score. Only axes whose variance
is above ``1e-6`` of the largest are kept, dividing by the near-zero spread of the others
would amplify noise; and at most ``(n - 1) // 4`` of them (and ``max_dims``): with as many
axes as the gallery spans, whitening maps the gallery onto a regular simplex, every pair
scoring ``-1/(n - 1)`` (measured: 112 synthetic videos whitened on 111 axes all scored
-0.009), so whitening needs far fewer axes than gallery videos.
The axes come from an SVD of at most ``max_fit_rows`` gallery rows (drawn with a fixed
seed), which bounds the cost for very wide encodings.

Every transformed vector is L2-normalised again, so the index stays a cosine index.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpipe.retrieval.faiss_index import normalise

#: Relative variance below which a principal axis is dropped before whitening.
VARIANCE_FLOOR = 1e-6


@dataclass(frozen=True)
class Centring:
    """``normalise((x - mean) @ projection)``; ``projection`` is None without whitening."""

    mean: np.ndarray
    projection: np.ndarray | None = None

    @property
    def whiten(self) -> bool:
        return self.projection is not None

    @property
    def dim(self) -> int:
        """Dimension of the transformed vectors."""
        return int(self.mean.shape[0] if self.projection is None else self.projection.shape[1])

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        """The transformed, unit-length rows of ``vectors`` (float32)."""
        centred = np.asarray(vectors, dtype=np.float32) - self.mean
        if self.projection is not None:
            centred = centred @ self.projection
        return normalise(centred)

    @classmethod
    def fit(
        cls, vectors: np.ndarray, *, whiten: bool = False, max_dims: int = 512, max_fit_rows: int = 8192, seed: int = 0
    ) -> Centring:
        """Fit on the gallery's unit vectors (float64 arithmetic, float32 result)."""
        x = np.asarray(vectors, dtype=np.float64)
        mean = x.mean(axis=0)
        if not whiten:
            return cls(mean.astype(np.float32))
        rows = x if len(x) <= max_fit_rows else x[np.random.default_rng(seed).choice(len(x), max_fit_rows, False)]
        centred = rows - mean
        _, singular, axes = np.linalg.svd(centred, full_matrices=False)
        variance = singular**2 / max(len(rows) - 1, 1)
        keep = variance > VARIANCE_FLOOR * (variance[0] if len(variance) else 0.0)
        keep[min(max_dims, max(1, (len(x) - 1) // 4)) :] = False
        if not keep.any():
            return cls(mean.astype(np.float32))
        projection = axes[keep].T / np.sqrt(variance[keep])
        return cls(mean.astype(np.float32), projection.astype(np.float32))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        arrays = {"mean": self.mean} | ({"projection": self.projection} if self.projection is not None else {})
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def load(cls, path: Path) -> Centring:
        with np.load(path) as stored:
            return cls(stored["mean"], stored["projection"] if "projection" in stored.files else None)


def score_spread(vectors: np.ndarray, *, sample: int = 512, seed: int = 0) -> dict[str, float]:
    """Percentiles of the cosine between distinct gallery vectors (a sample of rows against all).

    Scores bunched near 1 (a spread of 1e-3) mean the ranking is decided by noise.
    """
    count = len(vectors)
    if count < 2:
        return {}
    rows = np.random.default_rng(seed).choice(count, min(sample, count), replace=False)
    scores = vectors[rows] @ vectors.T
    scores[np.arange(len(rows)), rows] = np.nan
    values = scores[~np.isnan(scores)]
    p1, p50, p99 = np.percentile(values, [1, 50, 99])
    return {"min": float(values.min()), "p1": float(p1), "median": float(p50), "p99": float(p99),
            "max": float(values.max())}  # fmt: skip
