"""The record of finished work items of one stage, for resuming.

Each finished item (done or failed) becomes one record: its key, the fingerprint
it was computed under, and the rows it produced. Records are appended to Parquet
parts written atomically (temporary name, then rename), a batch at a time, so a
killed run loses at most the items finished since the last flush; nothing already
on disk is ever rewritten in place. Later records of a key win.

Parts are flushed by record count, or after ``flush_seconds`` for slow stages, so a
long GPU stage writes a few hundred parts rather than one per second; the runner
merges them into one when a run resumes. Parts never change once written, so a
load reuses what this process already read and reads only the parts added since:
the stage, its status and the stages reading its records load it once per run.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vpipe.artifacts import atomic_path

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


class StoredRecord(Record):
    """A record read back from a part: its rows stay JSON text until first used.

    Listing what is done (status, resume, the input fingerprints of the next stage)
    never reads rows, and parsing every record's rows was a third of ``vpipe status``
    on a Kinetics-sized workspace. Rewriting a part reuses the text as read.
    """

    def __init__(self, key: str, fingerprint: str, ok: bool, rows_json: str, error: str, path: str,
                 seconds: float, time: float) -> None:  # fmt: skip
        super().__init__(key, fingerprint, ok, None, error, path, seconds, time)  # type: ignore[arg-type]
        self.__dict__["_rows_json"] = rows_json

    @property  # type: ignore[override]
    def rows(self) -> list[dict[str, Any]]:
        parsed = self.__dict__.get("_rows")
        if parsed is None:
            parsed = self.__dict__["_rows"] = json.loads(self.__dict__["_rows_json"])
        return parsed

    @rows.setter
    def rows(self, value: list[dict[str, Any]] | None) -> None:
        self.__dict__["_rows"] = value

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in fields(Record))

    __hash__ = None  # type: ignore[assignment]  # mutable, like Record

    def rows_json(self) -> str:
        """The stored text, unless the rows were replaced since."""
        parsed = self.__dict__.get("_rows")
        return self.__dict__["_rows_json"] if parsed is None else json.dumps(parsed, default=_json_default)


#: Journals whose records this process holds, most recently used last: a run touches a
#: stage's journal and those of its inputs, so a few suffice and memory stays bounded.
_CACHE_SIZE = 4
_loaded: OrderedDict[Path, tuple[tuple[str, ...], dict[str, Record]]] = OrderedDict()


class Journal:
    """Append-only store of :class:`Record` for one stage."""

    def __init__(self, directory: Path, *, flush_every: int = 512, flush_seconds: float = 10.0):
        self.directory = directory
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._pending: list[Record] = []
        self._last_flush = time.monotonic()

    def parts(self) -> list[Path]:
        """The flushed parts, oldest first (names start with the write time in ns)."""
        return sorted(self.directory.glob("part-*.parquet")) if self.directory.exists() else []

    def load(self) -> dict[str, Record]:
        """Latest record per key, including records appended but not yet flushed."""
        parts = self.parts()
        names = tuple(part.name for part in parts)
        key = self.directory.resolve()
        cached_names, cached = _loaded.pop(key, ((), {}))
        if cached_names == names[: len(cached_names)]:
            records, new = cached, parts[len(cached_names) :]
        else:
            records, new = {}, parts
        for part in new:
            records.update(_read_part(part))
        _loaded[key] = (names, records)
        while len(_loaded) > _CACHE_SIZE:
            _loaded.popitem(last=False)
        merged = dict(records)
        for record in self._pending:
            merged[record.key] = record
        return merged

    def merge(self) -> None:
        """Rewrite the parts as one (latest record per key), so the next load reads one file."""
        if len(self.parts()) > 1:
            self.compact(self.load())

    def append(self, record: Record) -> None:
        self._pending.append(record)
        if (
            len(self._pending) >= self.flush_every
            or time.monotonic() - self._last_flush >= self.flush_seconds
        ):
            self.flush()

    def flush(self) -> None:
        """Write pending records as a part; a load of this process then need not read it back."""
        self._last_flush = time.monotonic()
        if not self._pending:
            return
        key = self.directory.resolve()
        before = tuple(part.name for part in self.parts())
        written = self._write_part(self._pending)
        cached = _loaded.get(key)
        if cached is not None and cached[0] == before:
            cached[1].update((record.key, _as_stored(record)) for record in self._pending)
            _loaded[key] = ((*before, written.name), cached[1])
        self._pending = []

    def compact(self, keep: dict[str, Record]) -> None:
        """Replace all parts by one holding ``keep``: bounds the part count across reruns."""
        self.flush()
        old = sorted(self.directory.glob("part-*.parquet")) if self.directory.exists() else []
        if len(old) <= 1 and len(keep) == sum(pq.read_metadata(p).num_rows for p in old):
            return
        written = (self._write_part(list(keep.values())).name,) if keep else ()
        for part in old:
            part.unlink()
        _loaded[self.directory.resolve()] = (written, dict(keep))

    def _write_part(self, records: list[Record]) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pylist(
            [
                {
                    "key": r.key,
                    "fingerprint": r.fingerprint,
                    "ok": r.ok,
                    "error": r.error,
                    "path": r.path,
                    "rows": r.rows_json() if isinstance(r, StoredRecord) else json.dumps(r.rows, default=_json_default),
                    "seconds": r.seconds,
                    "time": r.time,
                }
                for r in records
            ],
            schema=RECORD_SCHEMA,
        )
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        path = self.directory / name
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path


def _read_part(part: Path) -> dict[str, Record]:
    """One part's records by key, column-wise: ~3x faster than a row-wise ``to_pylist``."""
    table = pq.read_table(part, schema=RECORD_SCHEMA)
    columns = {name: table.column(name).to_pylist() for name in RECORD_SCHEMA.names}
    records = {}
    for key, fp, ok, error, path, rows, seconds, when in zip(*(columns[name] for name in RECORD_SCHEMA.names)):
        records[key] = StoredRecord(key, fp, ok, rows, error, path, seconds, when)
    return records


def _as_stored(record: Record) -> Record:
    """The record as a load would read it back: rows through JSON (numpy values become lists)."""
    rows = json.loads(json.dumps(record.rows, default=_json_default))
    return replace(record, rows=rows)


def _json_default(value: Any) -> Any:
    """Numpy scalars and arrays appear in rows produced by workers."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot store {type(value).__name__} in a journal row")
