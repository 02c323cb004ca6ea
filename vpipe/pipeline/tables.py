"""Parquet tables written atomically, carrying their fingerprint in the schema metadata."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vpipe.artifacts import atomic_path

FINGERPRINT_KEY = b"vpipe.fingerprint"


def write_table(
    data: pd.DataFrame | pa.Table,
    path: Path,
    *,
    fingerprint: str,
    schema: pa.Schema | None = None,
    metadata: dict[str, str] | None = None,
) -> None:
    """Write through a temporary name and rename: readers see the old file or the new one."""
    if isinstance(data, pd.DataFrame):
        table = pa.Table.from_pandas(data, schema=schema, preserve_index=False)
    else:
        table = data if schema is None else data.cast(schema)
    extra = {f"vpipe.{key}".encode(): value.encode() for key, value in (metadata or {}).items()}
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), **extra, FINGERPRINT_KEY: fingerprint.encode()}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def table_fingerprint(path: Path) -> str:
    """The fingerprint a table was written under, or "" for foreign files."""
    metadata = pq.read_schema(path).metadata or {}
    return metadata.get(FINGERPRINT_KEY, b"").decode()


def table_metadata(path: Path, key: str) -> str:
    """A ``metadata`` entry given to :func:`write_table`, or ""."""
    metadata = pq.read_schema(path).metadata or {}
    return metadata.get(f"vpipe.{key}".encode(), b"").decode()
