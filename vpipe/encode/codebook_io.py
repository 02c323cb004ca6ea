"""The codebook artifact: k-means centroids plus the diagonal GMM that Fisher vectors need.

On-disk layout of ``codebooks/<features>-k<K>.h5`` (format ``vpipe.codebook/1``)::

    /centroids       (K, D) float32   k-means centres (BoF and VLAD assign to these)
    /gmm_weights     (K,)   float32   mixture weights, summing to 1
    /gmm_means       (K, D) float32
    /gmm_variances   (K, D) float32   diagonal variances, floored
    attrs: format, fingerprint, provenance (JSON)

The file is written under a temporary name and renamed, so a reader sees either the
previous codebook or the new one, never a half-written file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from vpipe.errors import StageError

CODEBOOK_FORMAT = "vpipe.codebook/1"
_ARRAYS = ("centroids", "gmm_weights", "gmm_means", "gmm_variances")


@dataclass
class Codebook:
    """A fitted codebook and how it was made (``provenance`` holds the fingerprint)."""

    centroids: np.ndarray
    gmm_weights: np.ndarray
    gmm_means: np.ndarray
    gmm_variances: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def clusters(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def fingerprint(self) -> str:
        return str(self.provenance.get("fingerprint", ""))


def temp_path(path: Path) -> Path:
    """The name an artifact is written under before its atomic rename."""
    return path.with_name(f".{path.name}.tmp")


def save_codebook(path: Path, codebook: Codebook) -> None:
    """Write ``codebook`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    with h5py.File(tmp, "w") as handle:
        for name in _ARRAYS:
            handle.create_dataset(name, data=np.asarray(getattr(codebook, name), dtype=np.float32))
        handle.attrs["format"] = CODEBOOK_FORMAT
        handle.attrs["fingerprint"] = codebook.fingerprint
        handle.attrs["provenance"] = json.dumps(codebook.provenance, sort_keys=True, default=str)
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_codebook(path: Path) -> Codebook:
    """Read a codebook written by :func:`save_codebook`."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"no codebook at {path}: run `vpipe encode` to fit it")
    with h5py.File(path, "r") as handle:
        if handle.attrs.get("format") != CODEBOOK_FORMAT:
            raise StageError(f"{path} is not a {CODEBOOK_FORMAT} file; delete it and rerun `vpipe encode`")
        arrays = {name: handle[name][()] for name in _ARRAYS}
        provenance = json.loads(handle.attrs["provenance"])
    return Codebook(**arrays, provenance=provenance)


def stored_fingerprint(path: Path) -> str:
    """The fingerprint attribute of an HDF5 artifact, or "" if it is missing or foreign."""
    if not Path(path).is_file():
        return ""
    try:
        with h5py.File(path, "r") as handle:
            return str(handle.attrs.get("fingerprint", ""))
    except OSError:
        return ""
