"""The encodings artifact: one matrix of video vectors per (features, K, method).

Layout of ``encodings/<features>-k<K>-<method>.h5`` (format ``vpipe.encoding/1``)::

    /X          (N, dim) float32, about 1 MB chunks of whole rows
    /video_id   (N,) UTF-8
    /label      (N,) int64
    /split      (N,) UTF-8 (train / val / test / unused)
    attrs: format, fingerprint, provenance (JSON)

Rows are written a batch of videos at a time and the file is renamed into place only
when complete, so a killed run leaves no file that looks finished. Readers go through
:class:`EncodingReader`, which holds only the small per-row columns and reads ``X`` in
row blocks of about :data:`BLOCK_BYTES`; :func:`load_encodings` reads the whole matrix
and is for small files (tests, notebooks) or callers that checked a memory budget.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vpipe.artifacts import Closing, commit, discard, temp_path, write_digest_file
from vpipe.encode.budget import check_budget
from vpipe.errors import StageError

if TYPE_CHECKING:
    import pandas as pd

ENCODING_FORMAT = "vpipe.encoding/1"
_CHUNK_BYTES = 1 << 20
#: Bytes of ``X`` a reader holds at once.
BLOCK_BYTES = 64 << 20


class EncodingWriter(Closing):
    """Write ``videos`` (columns video_id, label, split) and their vectors, row by row."""

    def __init__(self, path: Path, videos: pd.DataFrame, dim: int, *, fingerprint: str, provenance: dict[str, Any]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_path(self.path)
        import h5py

        self._file = h5py.File(self._tmp, "w")
        rows = max(1, min(len(videos), _CHUNK_BYTES // (4 * dim)))
        self._x = self._file.create_dataset("X", shape=(len(videos), dim), dtype=np.float32, chunks=(rows, dim))
        self._file.create_dataset("video_id", data=videos["video_id"].tolist(), dtype=h5py.string_dtype())
        self._file.create_dataset("label", data=videos["label"].to_numpy(np.int64))
        self._file.create_dataset("split", data=videos["split"].tolist(), dtype=h5py.string_dtype())
        self._file.attrs["format"] = ENCODING_FORMAT
        self._file.attrs["fingerprint"] = fingerprint
        self._file.attrs["provenance"] = json.dumps(provenance, sort_keys=True, default=str)

    def close(self) -> None:
        """Rename the finished file into place, with its digest."""
        self._file.close()
        commit(self._tmp, self.path)
        write_digest_file(self.path)

    def abort(self) -> None:
        self._file.close()
        discard(self._tmp)

    def write(self, row: int, vector: np.ndarray) -> None:
        self._x[row] = vector

    def write_rows(self, start: int, vectors: np.ndarray) -> None:
        """Rows ``start .. start + len(vectors)`` in one write."""
        self._x[start : start + len(vectors)] = vectors


@dataclass
class Encodings:
    x: np.ndarray
    video_id: np.ndarray
    label: np.ndarray
    split: np.ndarray
    provenance: dict[str, Any]


class EncodingReader(Closing):
    """An open encodings file: per-row columns in memory, ``X`` read in row blocks."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise StageError(f"no encodings at {self.path}: run `vpipe encode` to build them")
        import h5py

        self._file = h5py.File(self.path, "r")
        if self._file.attrs.get("format") != ENCODING_FORMAT:
            self._file.close()
            raise StageError(f"{self.path} is not a {ENCODING_FORMAT} file; delete it and rerun `vpipe encode`")
        self._x = self._file["X"]
        self.video_id = self._file["video_id"].asstr()[()]
        self.label = self._file["label"][()]
        self.split = self._file["split"].asstr()[()]
        self.provenance = json.loads(self._file.attrs["provenance"])

    def close(self) -> None:
        self._file.close()

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self._x.shape)

    def block_rows(self, block_bytes: int = BLOCK_BYTES) -> int:
        """Rows per block, about ``block_bytes`` of ``X``: whole HDF5 chunks when a chunk fits."""
        rows = max(1, block_bytes // (4 * max(1, self.shape[1])))
        chunk = self._x.chunks[0] if self._x.chunks else 1
        return rows // chunk * chunk if rows >= chunk else rows

    def blocks(self, rows: np.ndarray, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(positions, X[positions])`` for the sorted row numbers ``rows``, a block at a time.

        Each block reads a contiguous range of whole chunks once and keeps the rows asked
        for, so a split scattered over the file costs one sequential pass.
        """
        rows = np.sort(np.asarray(rows, dtype=np.int64))
        step = self.block_rows(block_bytes)
        for start in range(0, self.shape[0], step):
            lo, hi = np.searchsorted(rows, [start, start + step])
            if hi > lo:
                wanted = rows[lo:hi]
                yield np.arange(lo, hi), self._x[start : start + step][wanted - start]


def load_encodings(path: Path, *, memory_budget: int | None = None) -> Encodings:
    """Read a whole encodings file into memory, refused when ``X`` exceeds ``memory_budget``."""
    with EncodingReader(path) as reader:
        if memory_budget is not None:
            check_budget(
                f"the encodings {reader.path.name} ({reader.shape[0]} × {reader.shape[1]})",
                4 * reader.shape[0] * reader.shape[1],
                memory_budget,
                "read them in blocks with EncodingReader or raise --memory-budget",
            )
        return Encodings(
            x=reader._x[()],
            video_id=reader.video_id,
            label=reader.label,
            split=reader.split,
            provenance=reader.provenance,
        )
