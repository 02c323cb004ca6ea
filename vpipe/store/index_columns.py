"""A feature set's index as Arrow columns, read once per process, for fingerprints and plans.

What ``vpipe status`` needs of a feature set to know whether the whole-dataset steps
(encode, train, evaluate) are current is small: the hash of ``index.parquet`` (their
fingerprints cover it), which videos have view 0 (the usable-video rule) and the shape
of each layer per step (the codebook's sample size and dimension). Opening the set as a
:class:`~vpipe.store.reader.FeatureSet` gives all that but builds a pandas index with a
group per (video, view), which took seconds per set at Kinetics size and imports torch
and h5py. Here the file is read once for both the hash and the three columns, and the
result is kept for the process, keyed by the file's size and mtime, since status asks
for one set once per step that reads it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vpipe.errors import ConfigError, StageError
from vpipe.store.index import INDEX_FILE, missing_index, producing_command


@dataclass(frozen=True, eq=False)
class IndexColumns:
    """The columns of one feature set's index that fingerprints and plans read.

    ``view0`` holds ``video_id`` and ``layers`` of the view-0 rows in index order;
    ``layer_specs`` every distinct ``layers`` JSON of the index (all views) and
    ``first_layers`` the first row's. Checks and numbers equal those of
    :class:`~vpipe.store.reader.FeatureSet` and :mod:`vpipe.encode.fit` (tested).
    """

    directory: Path
    sha256: str
    view0: pa.Table
    layer_specs: tuple[str, ...]
    first_layers: str | None

    @cached_property
    def view0_ids(self) -> frozenset[str]:
        return frozenset(pc.unique(self.view0["video_id"]).to_pylist())

    @property
    def layers(self) -> list[str]:
        """The layer names, as :attr:`FeatureSet.layers`; the same error for mixed shards."""
        layer_sets = {tuple(json.loads(spec)) for spec in self.layer_specs}
        if len(layer_sets) > 1:
            raise StageError(
                f"{self.directory} mixes shards with different layers {sorted(layer_sets)}; "
                f"it holds outputs of different configurations: delete it and run "
                f"`{producing_command(self.directory)}` again"
            )
        return list(layer_sets.pop()) if layer_sets else []

    def steps(self, layer: str) -> dict[str, int]:
        """Descriptors one clip row of each ``layers`` JSON gives (see :func:`steps_per_row`)."""
        return steps_per_row(self.directory, self.layers, self.layer_specs, layer)

    def descriptor_dim(self, layer: str) -> int:
        """D of ``layer``'s per-step descriptors (as :func:`vpipe.encode.fit.descriptor_dim`)."""
        self.steps(layer)
        return int(json.loads(self.first_layers)[layer]["shape"][-1])

    def descriptor_total(self, video_ids: Iterable[str], layer: str) -> int:
        """View-0 descriptors of ``video_ids`` (as :func:`vpipe.encode.fit.train_descriptor_total`)."""
        steps = self.steps(layer)
        wanted = pa.array(list(video_ids), pa.string())
        chosen = self.view0["layers"].filter(pc.is_in(self.view0["video_id"], value_set=wanted))
        counts = pc.value_counts(chosen).to_pylist()
        return sum(steps[entry["values"]] * entry["counts"] for entry in counts)


def steps_per_row(directory: Path, layers: list[str], specs: Iterable[str], layer: str) -> dict[str, int]:
    """Descriptors one clip row of ``layer`` gives, per distinct ``layers`` JSON ``specs``
    of the feature set at ``directory``: τ for a clip row of shape ``(τ, D)``, one for
    ``(D,)`` (τ may differ between shards). Other shapes (spatial grids) are not
    descriptor sequences and are refused, as a layer the set does not have is.
    """
    if layer not in layers:
        raise ConfigError(f"{directory} has no layer {layer!r}; it has {layers}")
    steps = {}
    for spec in specs:
        shape = json.loads(spec)[layer]["shape"]
        if len(shape) not in (1, 2):
            raise ConfigError(
                f"layer {layer!r} of {directory} has clip shape {shape}; encoding needs "
                f"per-step vectors (τ, D) or (D,): choose a pooled layer with --layer"
            )
        steps[spec] = 1 if len(shape) == 1 else int(shape[0])
    return steps


def index_columns(directory: Path) -> IndexColumns:
    """The index of the feature set at ``directory``; the :class:`StageError` of
    :func:`~vpipe.store.index.read_index` if it has none."""
    path = Path(directory) / INDEX_FILE
    if not path.is_file():
        raise missing_index(Path(directory))
    stat = path.stat()
    return _read(path, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _read(path: Path, size: int, mtime_ns: int) -> IndexColumns:
    data = path.read_bytes()
    table = pq.read_table(pa.BufferReader(data), columns=["video_id", "view", "layers"])
    view0 = table.filter(pc.equal(table["view"], 0)).select(["video_id", "layers"])
    specs = tuple(pc.unique(table["layers"]).to_pylist())
    first = table["layers"][0].as_py() if table.num_rows else None
    return IndexColumns(path.parent, hashlib.sha256(data).hexdigest(), view0, specs, first)
