"""The per-artifact ``index.parquet``: which shard and row hold each clip.

One row per (video_id, clip, view). A row is enough to read the clip back with no
other configuration: ``shard`` is the shard's path relative to the feature-set
directory, ``row`` its row in every layer, and ``layers`` a JSON object mapping each
layer name to ``{"dataset": <HDF5 path in the shard>, "shape": [...], "dtype": ...}``
(the shape of one clip, without the row axis). ``layers`` is one JSON string rather
than a column per layer so that the schema does not depend on the backbone; within a
shard it is the same string, which Parquet's dictionary encoding stores once.

The schema metadata ``vpipe.shards`` is the catalogue of the shards the index
references: each one's size and SHA-256 when it was written (see
:func:`read_shard_digests`), which ``vpipe verify`` and ``vpipe status`` check.

The index is the commit point of a stage: shards renamed into place but not yet in
the index are orphans (:func:`orphan_shards`), redone or cleaned up by a rerun.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from vpipe.artifacts import FileDigest, atomic_path
from vpipe.errors import StageError
from vpipe.store.shards import SHARD_BYTES, SHARD_SHA256

if TYPE_CHECKING:
    import pandas as pd

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

#: Schema metadata key of the shard catalogue: JSON ``{shard: {"bytes", "sha256"}}``.
SHARDS_METADATA = b"vpipe.shards"


def producing_command(directory: Path) -> str:
    """The command that builds the artifact at ``directory``, for error messages.

    Artifacts live at ``<workspace>/<dataset>/flow/<plan>/`` or
    ``<workspace>/<dataset>/features/<backbone>-<stream>/``.
    """
    directory = Path(directory)
    stage = "flow" if directory.parent.name == "flow" else "extract"
    return f"vpipe {stage} --dataset {directory.parent.parent.name}"


def repair_command(directory: Path) -> str:
    """The commands that find and recompute damaged files of the artifact at ``directory``."""
    dataset = Path(directory).parent.parent.name
    return f"vpipe verify --dataset {dataset} --repair` then `vpipe run --dataset {dataset}"


def write_index(directory: Path, rows: Iterable[Mapping[str, object]] | pd.DataFrame) -> Path:
    """Write ``rows`` to ``directory/index.parquet`` atomically and return its path.

    Rows are sorted by (video_id, view, clip) so the file is deterministic and a
    reader's iteration order is stable. The file is written under a temporary name
    and renamed, so readers see the old index or the new one, never half of one.
    """
    import pandas as pd

    directory = Path(directory)
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    if frame.empty:
        frame = pd.DataFrame(columns=INDEX_SCHEMA.names)
    catalogue = _shard_catalogue(frame)
    duplicated = frame.duplicated(_KEY)
    if duplicated.any():
        first = frame[duplicated].iloc[0]
        raise ValueError(
            f"index for {directory} has clip {first['clip']} view {first['view']} of "
            f"{first['video_id']!r} more than once"
        )
    frame = frame.sort_values(["video_id", "view", "clip"], kind="stable")
    table = pa.Table.from_pandas(frame[INDEX_SCHEMA.names], schema=INDEX_SCHEMA, preserve_index=False)
    table = table.replace_schema_metadata(
        {**INDEX_SCHEMA.metadata, SHARDS_METADATA: json.dumps(catalogue, sort_keys=True).encode()}
    )
    path = directory / INDEX_FILE
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def _shard_catalogue(frame: pd.DataFrame) -> dict[str, dict[str, object]]:
    """Size and SHA-256 per shard, from rows that carry them (shards written before
    digests were recorded have none, and are checked for readability only)."""
    if SHARD_SHA256 not in frame.columns:
        return {}
    known = frame.dropna(subset=[SHARD_SHA256]).drop_duplicates("shard")
    return {
        str(shard): FileDigest(int(size), str(sha)).to_dict()
        for shard, size, sha in zip(known["shard"], known[SHARD_BYTES], known[SHARD_SHA256])
    }


def read_shard_digests(directory: Path) -> dict[str, FileDigest]:
    """The recorded size and SHA-256 of each shard of the artifact at ``directory``."""
    metadata = pq.read_schema(Path(directory) / INDEX_FILE).metadata or {}
    catalogue = json.loads(metadata.get(SHARDS_METADATA, b"{}"))
    return {shard: FileDigest.from_dict(entry) for shard, entry in catalogue.items()}


def damaged_videos(directory: Path) -> dict[str, str]:
    """Videos whose shard is missing or has another size than when written, and why.

    Sizes only, no hashing: cheap enough for ``vpipe status`` and every run, and it
    catches truncated, emptied and deleted shards; a byte flipped in place keeps the
    size and needs ``vpipe verify``. Shards with no recorded size count as intact.
    """
    directory = Path(directory)
    if not (directory / INDEX_FILE).is_file():
        return {}
    digests = read_shard_digests(directory)
    damaged: dict[str, str] = {}
    for shard, digest in digests.items():
        try:
            size = os.stat(directory / shard).st_size
        except OSError:
            damaged[shard] = "missing"
            continue
        if size != digest.bytes:
            damaged[shard] = f"{size} bytes, {digest.bytes} when written"
    if not damaged:
        return {}
    index = pq.read_table(directory / INDEX_FILE, columns=["video_id", "shard"]).to_pandas()
    hit = index[index["shard"].isin(list(damaged))]
    return {str(v): f"{directory / s}: {damaged[s]}" for v, s in zip(hit["video_id"], hit["shard"])}


def shard_videos(index: pd.DataFrame) -> dict[str, list[str]]:
    """The videos each shard holds rows of, in index order: what a damaged shard costs."""
    return {
        str(shard): list(dict.fromkeys(group))
        for shard, group in index.groupby("shard", sort=True)["video_id"]
    }


def read_index(directory: Path) -> pd.DataFrame:
    """Read ``directory/index.parquet``; :class:`StageError` if the stage never finished."""
    directory = Path(directory)
    path = directory / INDEX_FILE
    if not path.is_file():
        raise missing_index(directory)
    return pq.read_table(path, schema=INDEX_SCHEMA).to_pandas()


def missing_index(directory: Path) -> StageError:
    """The one error for an artifact without an index: its stage never finished."""
    return StageError(
        f"no {INDEX_FILE} in {directory}: the artifact is missing or its stage did not "
        f"finish; run `{producing_command(directory)}` to build it (a rerun resumes)"
    )


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
