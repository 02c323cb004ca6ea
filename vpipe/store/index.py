"""The per-artifact ``index.parquet``: which shard and row hold each clip.

One row per (video_id, clip, view). A row is enough to read the clip back with no
other configuration: ``shard`` is the shard's path relative to the feature-set
directory, ``row`` its row in every layer, and ``layers`` a JSON object mapping each
layer name to ``{"dataset": <HDF5 path in the shard>, "shape": [...], "dtype": ...}``
(the shape of one clip, without the row axis). ``layers`` is one JSON string rather
than a column per layer so that the schema does not depend on the backbone; within a
shard it is the same string, which Parquet's dictionary encoding stores once.

The index is the commit point of a stage: shards renamed into place but not yet in
the index are orphans (:func:`orphan_shards`), redone or cleaned up by a rerun.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vpipe.errors import StageError
from vpipe.store.shards import temp_path

INDEX_FILE = "index.parquet"

INDEX_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("clip", pa.int32(), nullable=False),
        pa.field("view", pa.int32(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("layers", pa.string(), nullable=False),
    ],
    metadata={"vpipe.index": "1"},
)

_KEY = ["video_id", "clip", "view"]


def producing_command(directory: Path) -> str:
    """The command that builds the artifact at ``directory``, for error messages.

    Artifacts live at ``<workspace>/<dataset>/flow/<plan>/`` or
    ``<workspace>/<dataset>/features/<backbone>-<stream>/``.
    """
    directory = Path(directory)
    stage = "flow" if directory.parent.name == "flow" else "extract"
    return f"vpipe {stage} --dataset {directory.parent.parent.name}"


def write_index(directory: Path, rows: Iterable[Mapping[str, object]] | pd.DataFrame) -> Path:
    """Write ``rows`` to ``directory/index.parquet`` atomically and return its path.

    Rows are sorted by (video_id, view, clip) so the file is deterministic and a
    reader's iteration order is stable. The file is written under a temporary name
    and renamed, so readers see the old index or the new one, never half of one.
    """
    directory = Path(directory)
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows), columns=INDEX_SCHEMA.names)
    duplicated = frame.duplicated(_KEY)
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        raise ValueError(
            f"index for {directory} has clip {first['clip']} view {first['view']} of "
            f"{first['video_id']!r} more than once"
        )
    frame = frame.sort_values(["video_id", "view", "clip"], kind="stable")
    table = pa.Table.from_pandas(frame[INDEX_SCHEMA.names], schema=INDEX_SCHEMA, preserve_index=False)
    path = directory / INDEX_FILE
    tmp = temp_path(path)
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_index(directory: Path) -> pd.DataFrame:
    """Read ``directory/index.parquet``; :class:`StageError` if the stage never finished."""
    directory = Path(directory)
    path = directory / INDEX_FILE
    if not path.is_file():
        raise StageError(
            f"no {INDEX_FILE} in {directory}: the artifact is missing or its stage did not "
            f"finish; run `{producing_command(directory)}` to build it (a rerun resumes)"
        )
    return pq.read_table(path, schema=INDEX_SCHEMA).to_pandas()


def orphan_shards(directory: Path, index: pd.DataFrame) -> list[Path]:
    """Files in ``directory`` that the index does not account for, for cleanup.

    These are ``*.h5`` shards no index row references (a task that finished after
    the last index write, or one superseded by a rerun) and leftover ``.*.tmp`` files
    of killed writers. Only call this while no writer is running in ``directory``:
    a live writer's temporary file looks like a leftover.
    """
    directory = Path(directory)
    referenced = {directory / shard for shard in index["shard"].unique()}
    shards = [p for p in directory.glob("*.h5") if p not in referenced]
    return sorted(shards + list(directory.glob(".*.tmp")))
