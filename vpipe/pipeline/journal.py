"""The record of finished work items of one stage, for resuming.

Each finished item (done or failed) becomes one record: its key, the fingerprint
it was computed under, and the rows it produced. Records are appended to small
Parquet parts written atomically (temporary name, then rename), a batch at a time,
so a killed run loses at most the items finished since the last flush; nothing
already on disk is ever rewritten in place. Later records of a key win.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

RECORD_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("fingerprint", pa.string()),
        ("ok", pa.bool_()),
        ("error", pa.string()),
        ("path", pa.string()),
        ("rows", pa.string()),
        ("seconds", pa.float64()),
        ("time", pa.float64()),
    ]
)


@dataclass
class Record:
    """What one work item produced."""

    key: str
    fingerprint: str
    ok: bool
    rows: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""
    path: str = ""
    seconds: float = 0.0
    time: float = field(default_factory=time.time)


class Journal:
    """Append-only store of :class:`Record` for one stage."""

    def __init__(self, directory: Path, *, flush_every: int = 64, flush_seconds: float = 1.0):
        self.directory = directory
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._pending: list[Record] = []
        self._last_flush = time.monotonic()

    def load(self) -> dict[str, Record]:
        """Latest record per key, including records appended but not yet flushed."""
        records: dict[str, Record] = {}
        parts = sorted(self.directory.glob("part-*.parquet")) if self.directory.exists() else []
        for part in parts:
            for row in pq.read_table(part, schema=RECORD_SCHEMA).to_pylist():
                row["rows"] = json.loads(row["rows"])
                records[row["key"]] = Record(**row)
        for record in self._pending:
            records[record.key] = record
        return records

    def append(self, record: Record) -> None:
        self._pending.append(record)
        if (
            len(self._pending) >= self.flush_every
            or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        self._write_part(self._pending)
        self._pending = []

    def compact(self, keep: dict[str, Record]) -> None:
        """Replace all parts by one holding ``keep``: bounds the part count across reruns."""
        self.flush()
        old = sorted(self.directory.glob("part-*.parquet")) if self.directory.exists() else []
        if len(old) <= 1 and len(keep) == sum(pq.read_metadata(p).num_rows for p in old):
            return
        if keep:
            self._write_part(list(keep.values()))
        for part in old:
            part.unlink()

    def _write_part(self, records: list[Record]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(
            [
                {
                    "key": r.key,
                    "fingerprint": r.fingerprint,
                    "ok": r.ok,
                    "error": r.error,
                    "path": r.path,
                    "rows": json.dumps(r.rows, default=_json_default),
                    "seconds": r.seconds,
                    "time": r.time,
                }
                for r in records
            ],
            schema=RECORD_SCHEMA,
        )
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.directory / f".{name}.tmp"
        pq.write_table(table, tmp)
        tmp.replace(self.directory / name)


def _json_default(value: Any) -> Any:
    """Numpy scalars and arrays appear in rows produced by workers."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a journal row")
