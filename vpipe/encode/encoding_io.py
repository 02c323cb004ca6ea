"""The encodings artifact: one matrix of video vectors per (features, K, method).

Layout of ``encodings/<features>-k<K>-<method>.h5`` (format ``vpipe.encoding/1``)::

    /X          (N, dim) float32, about 1 MB chunks of whole rows
    /video_id   (N,) UTF-8
    /label      (N,) int64
    /split      (N,) UTF-8 (train / val / test / unused)
    attrs: format, fingerprint, provenance (JSON)

Rows are appended as videos are encoded and the file is renamed into place only when
complete, so a killed run leaves no file that looks finished.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import h5py
import numpy as np
import pandas as pd

from vpipe.encode.codebook_io import temp_path
from vpipe.errors import StageError

ENCODING_FORMAT = "vpipe.encoding/1"
_CHUNK_BYTES = 1 << 20


class EncodingWriter:
    """Write ``videos`` (columns video_id, label, split) and their vectors, row by row."""

    def __init__(self, path: Path, videos: pd.DataFrame, dim: int, *, fingerprint: str, provenance: dict[str, Any]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_path(self.path)
        self._file = h5py.File(self._tmp, "w")
        rows = max(1, min(len(videos), _CHUNK_BYTES // (4 * dim)))
        self._x = self._file.create_dataset("X", shape=(len(videos), dim), dtype=np.float32, chunks=(rows, dim))
        self._file.create_dataset("video_id", data=videos["video_id"].tolist(), dtype=h5py.string_dtype())
        self._file.create_dataset("label", data=videos["label"].to_numpy(np.int64))
        self._file.create_dataset("split", data=videos["split"].tolist(), dtype=h5py.string_dtype())
        self._file.attrs["format"] = ENCODING_FORMAT
        self._file.attrs["fingerprint"] = fingerprint
        self._file.attrs["provenance"] = json.dumps(provenance, sort_keys=True, default=str)

    def __enter__(self) -> EncodingWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._file.close()
        if exc_type is not None:
            self._tmp.unlink(missing_ok=True)
            return
        with open(self._tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(self._tmp, self.path)

    def write(self, row: int, vector: np.ndarray) -> None:
        self._x[row] = vector


@dataclass
class Encodings:
    x: np.ndarray
    video_id: np.ndarray
    label: np.ndarray
    split: np.ndarray
    provenance: dict[str, Any]


def load_encodings(path: Path) -> Encodings:
    """Read a whole encodings file into memory."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"no encodings at {path}: run `vpipe encode` to build them")
    with h5py.File(path, "r") as handle:
        if handle.attrs.get("format") != ENCODING_FORMAT:
            raise StageError(f"{path} is not a {ENCODING_FORMAT} file; delete it and rerun `vpipe encode`")
        return Encodings(
            x=handle["X"][()],
            video_id=handle["video_id"].asstr()[()],
            label=handle["label"][()],
            split=handle["split"].asstr()[()],
            provenance=json.loads(handle.attrs["provenance"]),
        )
