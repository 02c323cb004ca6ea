"""``vpipe export``: an embedding as a Parquet file a vector database can load.

One row per video (or per clip, with ``clips``): ``video_id``, ``clip`` (-1 for videos),
``label``, ``label_name``, ``split``, ``path``, ``start_s`` / ``end_s`` (the clip's time
span in seconds; null for videos) and ``vector``, the unit vector as a fixed-size list of
float32. The vectors are the embedding's own L2-normalised ones, not centred: centring
is a property of a gallery (an index), and a database that holds several collections
would need one mean per collection. The file's schema metadata ``vpipe`` holds the
embedding, its fingerprint, its provenance (everything needed to embed a new video the
same way) and the vpipe version.

The gallery is read and written a batch at a time (:meth:`Embedding.batches`), one row
group per batch, so memory stays bounded by the batch whatever the gallery's size. The
file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vpipe import __version__
from vpipe.artifacts import atomic_path
from vpipe.errors import ConfigError, StageError
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.retrieval.embeddings import BATCH_ROWS, Gallery, parse_embedding

#: Schema metadata key of the export's provenance.
METADATA_KEY = b"vpipe"


def export_schema(dim: int, metadata: dict[str, Any]) -> pa.Schema:
    return pa.schema(
        [
            pa.field("video_id", pa.string(), nullable=False),
            pa.field("clip", pa.int32(), nullable=False),
            pa.field("label", pa.int64(), nullable=False),
            pa.field("label_name", pa.string()),
            pa.field("split", pa.string()),
            pa.field("path", pa.string()),
            pa.field("start_s", pa.float64()),
            pa.field("end_s", pa.float64()),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        ],
        metadata={METADATA_KEY: json.dumps(metadata).encode()},
    )


def _table(part: Gallery, schema: pa.Schema) -> pa.Table:
    rows = part.rows
    vectors = np.ascontiguousarray(part.vectors, dtype=np.float32)
    values = pa.array(vectors.reshape(-1), type=pa.float32())
    spans = {
        column: pa.array(rows[column].to_numpy(np.float64), type=pa.float64(), from_pandas=True)
        for column in ("start_s", "end_s")
    }  # NaN -> null: a video has no span
    return pa.Table.from_arrays(
        [
            pa.array(rows["video_id"].astype(str), pa.string()),
            pa.array(rows["clip"].to_numpy(np.int32), pa.int32()),
            pa.array(rows["label"].to_numpy(np.int64), pa.int64()),
            pa.array(rows["label_name"].astype(str), pa.string()),
            pa.array(rows["split"].astype(str), pa.string()),
            pa.array(rows["path"].astype(str), pa.string()),
            spans["start_s"],
            spans["end_s"],
            pa.FixedSizeListArray.from_arrays(values, vectors.shape[1]),
        ],
        schema=schema,
    )


def export_embedding(
    ws: DatasetWorkspace, embedding: str, output: str | Path, *, clips: bool = False, batch_rows: int = BATCH_ROWS,
    device: str = "auto",
) -> dict[str, Any]:
    """Write ``embedding``'s gallery to ``output``; return the row count, dimension, path and time."""
    output = Path(output).expanduser()
    if output.suffix != ".parquet":
        raise ConfigError(f"--output {output} should be a .parquet file")
    if batch_rows < 1:
        raise ConfigError(f"batch_rows must be at least 1, got {batch_rows}")
    source = parse_embedding(embedding)
    metadata = {
        "embedding": source.text,
        "embedding_fingerprint": source.fingerprint(ws),
        "provenance": source.provenance(ws),
        "level": "clip" if clips else "video",
        "normalised": "l2",
        "dataset": ws.dataset,
        "vpipe_version": __version__,
    }
    started, count, writer, dim = time.perf_counter(), 0, None, 0
    with atomic_path(output) as tmp:
        try:
            for part in source.batches(ws, clips=clips, size=batch_rows, device=device):
                if writer is None:
                    dim = part.vectors.shape[1]
                    writer = pq.ParquetWriter(tmp, export_schema(dim, metadata))
                writer.write_table(_table(part, writer.schema), row_group_size=len(part.rows))
                count += len(part.rows)
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise StageError(f"{source.text} of dataset {ws.dataset!r} has no usable videos to export")
    seconds = time.perf_counter() - started
    return {"path": str(output), "rows": count, "dim": int(dim), "embedding": source.text,
            "level": metadata["level"], "seconds": round(seconds, 3)}  # fmt: skip


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The provenance stored in an export's schema metadata."""
    schema = pq.read_schema(path)
    if not schema.metadata or METADATA_KEY not in schema.metadata:
        raise StageError(f"{path} is not a vpipe export (no {METADATA_KEY.decode()} metadata)")
    return json.loads(schema.metadata[METADATA_KEY])
