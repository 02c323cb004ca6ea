"""The codebook artifact: k-means centroids plus the diagonal GMM that Fisher vectors need,
and the PCA that maps descriptors into the space both live in.

On-disk layout of ``codebooks/<features>-k<K>.h5`` (format ``vpipe.codebook/2``)::

    /centroids       (K, D') float32   k-means centres (BoF and VLAD assign to these)
    /gmm_weights     (K,)    float32   mixture weights, summing to 1
    /gmm_means       (K, D') float32
    /gmm_variances   (K, D') float32   diagonal variances, floored
    /pca/mean        (D,)    float64   optional: present when the codebook was fitted
    /pca/components  (D', D) float64   after PCA; D' = D without it
    /pca/explained_variance (D',) float64
    /pca/scale       (D',)   float64   1/σ per component when whitened, else 1
    attrs: format, fingerprint, provenance (JSON)

Whoever uses the centroids or the GMM applies :meth:`Codebook.project` to raw
descriptors first (the classic encoders do). Format ``/1`` files (no PCA) still load.

The file is written under a temporary name and renamed, so a reader sees either the
previous codebook or the new one, never a half-written file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vpipe.artifacts import atomic_path, write_digest_file
from vpipe.encode.pca import Pca
from vpipe.errors import StageError

CODEBOOK_FORMAT = "vpipe.codebook/2"
_READABLE = ("vpipe.codebook/1", CODEBOOK_FORMAT)
_ARRAYS = ("centroids", "gmm_weights", "gmm_means", "gmm_variances")
_PCA_ARRAYS = ("mean", "components", "explained_variance", "scale")


@dataclass
class Codebook:
    """A fitted codebook and how it was made (``provenance`` holds the fingerprint).

    ``dim`` is the space of the centroids and GMM (after PCA); ``input_dim`` is what raw
    descriptors must have.
    """

    centroids: np.ndarray
    gmm_weights: np.ndarray
    gmm_means: np.ndarray
    gmm_variances: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)
    pca: Pca | None = None

    @property
    def clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def input_dim(self) -> int:
        return self.pca.input_dim if self.pca is not None else self.dim

    def project(self, x: np.ndarray) -> np.ndarray:
        """Raw descriptors (N, input_dim) in the codebook's space (N, dim), float64."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(f"descriptors must be (T, {self.input_dim}), got {x.shape}")
        return self.pca.project(x) if self.pca is not None else x

    @property
    def fingerprint(self) -> str:
        return str(self.provenance.get("fingerprint", ""))


def save_codebook(path: Path, codebook: Codebook) -> None:
    """Write ``codebook`` to ``path`` atomically (temporary file, fsync, rename)."""
    import h5py

    with atomic_path(Path(path)) as tmp, h5py.File(tmp, "w") as handle:
        for name in _ARRAYS:
            handle.create_dataset(name, data=np.asarray(getattr(codebook, name), dtype=np.float32))
        if codebook.pca is not None:
            for name in _PCA_ARRAYS:
                handle.create_dataset(f"pca/{name}", data=np.asarray(getattr(codebook.pca, name), dtype=np.float64))
        handle.attrs["format"] = CODEBOOK_FORMAT
        handle.attrs["fingerprint"] = codebook.fingerprint
        handle.attrs["provenance"] = json.dumps(codebook.provenance, sort_keys=True, default=str)
    write_digest_file(path)


def load_codebook(path: Path) -> Codebook:
    """Read a codebook written by :func:`save_codebook`."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise StageError(f"no codebook at {path}: run `vpipe encode` to fit it")
    with h5py.File(path, "r") as handle:
        if handle.attrs.get("format") not in _READABLE:
            raise StageError(f"{path} is not a {CODEBOOK_FORMAT} file; delete it and rerun `vpipe encode`")
        arrays = {name: handle[name][()] for name in _ARRAYS}
        pca = (
            Pca(**{name: handle[f"pca/{name}"][()].astype(np.float64) for name in _PCA_ARRAYS})
            if "pca" in handle
            else None
        )
        provenance = json.loads(handle.attrs["provenance"])
    return Codebook(**arrays, provenance=provenance, pca=pca)


def stored_fingerprint(path: Path) -> str:
    """The fingerprint attribute of an HDF5 artifact, or "" if it is missing or foreign."""
    if not Path(path).is_file():
        return ""
    import h5py  # here, not at the top: status imports this module for workspaces with no codebook yet

    try:
        with h5py.File(path, "r") as handle:
            return str(handle.attrs.get("fingerprint", ""))
    except OSError:
        return ""
