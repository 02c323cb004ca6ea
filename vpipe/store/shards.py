"""Writing HDF5 shards: one file per task, renamed into place only when complete.

HDF5 allows one writer per file, and a distributed stage runs many tasks at once, so
every task writes its own shard. The shard is written under ``.<name>.tmp`` in the
target directory and renamed on a successful ``close()``: a killed worker leaves at
most a temporary file (see :func:`vpipe.store.index.orphan_shards`), never a shard
that looks complete, and a rerun of the same task (same :func:`shard_name`) replaces
its shard instead of adding a duplicate.

On-disk layout of a shard (format ``vpipe.shard/1``)::

    /                       attrs: format = "vpipe.shard/1"
                                   provenance = JSON string of the writer's ``attrs``
    /layers/<layer>         (rows, *shape), one row per chunk
    /rows/video_id          (rows,) UTF-8 strings
    /rows/clip              (rows,) int32
    /rows/view              (rows,) int32

The ``rows`` datasets make a shard self-describing, so an index can be rebuilt from
shards alone. One row per chunk means reading a clip decompresses exactly one chunk.
Every layer chunk carries HDF5's Fletcher-32 checksum, so a damaged chunk fails its
read in the library instead of returning garbage; the whole file's size and SHA-256
are returned with the index rows (``shard_bytes``, ``shard_sha256``) and recorded in
the index, for ``vpipe verify``.

Compression is decided by dtype, from a measurement with h5py 3.16 (size ratio, and
time to read 8 rows back):

- uint8 quantized flow (16, 2, 112, 112): lzf 0.56–0.76 at 10 ms, gzip level 1
  0.37–0.52 at 10 ms, none 1.0 at 1.3 ms.
- float16 pooled features (8, 1024): lzf 1.0, gzip 0.91 at twice the read time.
- float16 ReLU grid (2, 2048, 7, 7): lzf 0.79 at 9 ms, gzip 0.62 at 15 ms, none 0.9 ms.

Integer layers (flow) use gzip level 1: a third smaller than lzf at the same read
time, a write cost negligible next to TV-L1, and readable by any HDF5 tool (lzf is
h5py-only). Float layers are stored uncompressed: their low bits are near-random, so
compression saves little and multiplies read time, and heads reread them every epoch.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import DTypeLike

from vpipe.artifacts import Closing, commit, discard, file_digest, temp_path

if TYPE_CHECKING:
    import h5py

#: Value of the ``format`` file attribute; readers check it before trusting a layout.
SHARD_FORMAT = "vpipe.shard/1"
#: Group holding one dataset per layer.
LAYERS_GROUP = "layers"
#: Group holding the per-row keys (video_id, clip, view).
ROWS_GROUP = "rows"
#: Keys of a shard's size and SHA-256 in each of its index rows as a stage returns them
#: (and so in the stage's journal); :func:`vpipe.store.index.write_index` moves them to
#: the index's catalogue of shards.
SHARD_BYTES = "shard_bytes"
SHARD_SHA256 = "shard_sha256"


def shard_name(stage: str, key: str) -> str:
    """Deterministic shard file name for the task ``key`` of ``stage``.

    A rerun of the same task gets the same name, so its shard overwrites the old one
    rather than sitting next to it. The stage is hashed with the key so that tasks of
    different stages with equal keys never collide.
    """
    digest = hashlib.sha1(f"{stage}\0{key}".encode()).hexdigest()
    return f"shard-{digest[:12]}.h5"


def _compression(dtype: np.dtype) -> dict[str, object]:
    """h5py compression arguments for a stored dtype (see the module docstring)."""
    if dtype.kind in "biu":
        return {"compression": "gzip", "compression_opts": 1}
    return {}


class ShardWriter(Closing):
    """Write the clips of one task to a shard at ``path``.

    ``attrs`` is the provenance of the whole shard (backbone, stream, weights sha256,
    sampler, plan fingerprint, decoder, vpipe version, ...); it must be JSON-able.
    Float arrays are stored as float16 unless ``dtypes`` names another dtype for their
    layer; other dtypes (uint8 flow) are stored as given.

    Use as a context manager: leaving the block normally renames the shard into
    place; leaving it with an exception deletes the temporary file.
    """

    def __init__(
        self,
        path: Path,
        *,
        attrs: dict[str, object],
        dtypes: dict[str, DTypeLike] | None = None,
    ) -> None:
        self.path = Path(path)
        self._provenance = json.dumps(attrs, sort_keys=True)
        self._dtypes = {name: np.dtype(dt) for name, dt in (dtypes or {}).items()}
        self._tmp = temp_path(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        import h5py  # here, not at import: the index (read by ``vpipe status``) imports this module

        self._file: h5py.File | None = h5py.File(self._tmp, "w")
        self._keys: list[tuple[str, int, int]] = []
        self._seen: set[tuple[str, int, int]] = set()
        self._layers_json = ""
        #: Index rows of the shard, set by :meth:`close` (for use after a ``with`` block).
        self.rows: list[dict[str, object]] = []

    def _stored_dtype(self, layer: str, array: np.ndarray) -> np.dtype:
        if layer in self._dtypes:
            return self._dtypes[layer]
        return np.dtype(np.float16) if array.dtype.kind == "f" else array.dtype

    def add(self, video_id: str, clip: int, view: int, arrays: dict[str, np.ndarray]) -> None:
        """Append one clip: ``arrays`` maps every layer name to that clip's array.

        All clips of a shard must carry the same layers, and each layer the same shape
        and dtype, because a layer is one ``(rows, *shape)`` dataset.
        """
        if self._file is None:
            raise ValueError(f"shard writer for {self.path} is already closed")
        key = (str(video_id), int(clip), int(view))
        if key in self._seen:
            raise ValueError(f"{self.path}: clip {key[1]} view {key[2]} of {key[0]!r} added twice")
        group = self._file.require_group(LAYERS_GROUP)
        if self._keys and set(arrays) != set(group):
            raise ValueError(
                f"{self.path}: layers {sorted(arrays)} of {key[0]!r} differ from "
                f"{sorted(group)} of the clips before it; a shard holds one set of layers"
            )
        for name in arrays:
            if not name or "/" in name:
                raise ValueError(f"{self.path}: layer name {name!r} must be non-empty without '/'")
        row = len(self._keys)
        converted = {name: self._convert(name, np.asarray(a), key) for name, a in arrays.items()}
        for name, array in converted.items():
            if row == 0:
                group.create_dataset(
                    name,
                    shape=(0, *array.shape),
                    maxshape=(None, *array.shape),
                    chunks=(1, *array.shape),
                    dtype=array.dtype,
                    fletcher32=True,
                    **_compression(array.dtype),
                )
            dset = group[name]
            if dset.shape[1:] != array.shape or dset.dtype != array.dtype:
                raise ValueError(
                    f"{self.path}: layer {name!r} of {key[0]!r} clip {key[1]} is "
                    f"{array.dtype}{list(array.shape)} but earlier rows are "
                    f"{dset.dtype}{list(dset.shape[1:])}; rows of a layer in one shard "
                    f"must share shape and dtype (write differently shaped clips to "
                    f"separate shards)"
                )
        for name, array in converted.items():
            dset = group[name]
            dset.resize(row + 1, axis=0)
            dset[row] = array
        if row == 0:
            self._layers_json = json.dumps(
                {
                    name: {
                        "dataset": f"{LAYERS_GROUP}/{name}",
                        "shape": list(a.shape),
                        "dtype": a.dtype.name,
                    }
                    for name, a in converted.items()
                }
            )
        self._keys.append(key)
        self._seen.add(key)

    def _convert(self, layer: str, array: np.ndarray, key: tuple[str, int, int]) -> np.ndarray:
        """Cast to the stored dtype, refusing casts that turn finite values infinite."""
        target = self._stored_dtype(layer, array)
        with np.errstate(over="ignore"):
            out = array.astype(target, copy=False)
        if target.kind == "f" and array.dtype.kind == "f":
            overflow = np.isinf(out) & np.isfinite(array)
            if overflow.any():
                raise ValueError(
                    f"{self.path}: layer {layer!r} of {key[0]!r} clip {key[1]} has values "
                    f"beyond the range of {target}; pass dtypes={{{layer!r}: 'float32'}}"
                )
        return out

    def close(self) -> list[dict[str, object]]:
        """Finish the shard, rename it into place and return its index rows.

        A writer that was given no clips writes no shard and returns ``[]``. The
        ``shard`` of each row is the file name: shards live directly in the
        feature-set directory that holds ``index.parquet``.
        """
        if self._file is None:
            raise ValueError(f"shard writer for {self.path} is already closed")
        if not self._keys:
            self.abort()
            return []
        import h5py

        keys = self._file.create_group(ROWS_GROUP)
        keys.create_dataset("video_id", data=[k[0] for k in self._keys], dtype=h5py.string_dtype())
        keys.create_dataset("clip", data=np.array([k[1] for k in self._keys], dtype=np.int32))
        keys.create_dataset("view", data=np.array([k[2] for k in self._keys], dtype=np.int32))
        self._file.attrs["format"] = SHARD_FORMAT
        self._file.attrs["provenance"] = self._provenance
        self._file.close()
        self._file = None
        digest = file_digest(self._tmp)
        commit(self._tmp, self.path)
        self.rows = [
            {
                "video_id": video_id,
                "clip": clip,
                "view": view,
                "shard": self.path.name,
                "row": row,
                "layers": self._layers_json,
                SHARD_BYTES: digest.bytes,
                SHARD_SHA256: digest.sha256,
            }
            for row, (video_id, clip, view) in enumerate(self._keys)
        ]
        return self.rows

    def abort(self) -> None:
        """Discard the shard: close and delete the temporary file, rename nothing."""
        if self._file is not None:
            self._file.close()
            self._file = None
        discard(self._tmp)


def rows_per_job(
    video_ids: list[str], rows: list[dict[str, object]], errors: dict[int, Exception]
) -> list[list[dict[str, object]] | Exception]:
    """Split a shard's index rows back to the videos of a batched task, in task order.

    A batched stage function returns, per video, its rows or the error that video
    raised; videos that wrote nothing and raised nothing get an empty list.
    """
    grouped: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        grouped.setdefault(str(row["video_id"]), []).append(row)
    return [errors[i] if i in errors else grouped.get(video_id, []) for i, video_id in enumerate(video_ids)]
