"""Which items of a stage are done, failed, stale or new: one vectorised comparison.

``vpipe status``, the runner's resume and a dry run all ask the same question of a
stage: for each of its item keys, with the fingerprint the item has now, what does
the journal hold? Answering it record by record built one Python object per video
and per stage (a few hundred thousand on a Kinetics-sized workspace); here the
journal is read as Arrow columns (key, fingerprint, ok; the rows text is never
read), reduced to the latest record per key, and joined to the expected columns
with ``pyarrow.compute``, so the cost is a few array passes whatever the size.

States, per expected item:

- ``done``: the latest record of the key was made under the expected fingerprint and succeeded;
- ``failed``: the same, but the record is a failure (not retried until the input changes);
- ``stale``: the key has a record, made under another fingerprint;
- ``new``: the journal has no record of the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

#: Codes of :attr:`ItemStates.state`, in the order of :data:`STATE_NAMES`.
NEW, STALE, FAILED, DONE = 0, 1, 2, 3
STATE_NAMES = ("new", "stale", "failed", "done")

_COLUMNS = ["key", "fingerprint", "ok"]
_EMPTY = pa.table({"key": pa.array([], pa.string()), "fingerprint": pa.array([], pa.string()), "ok": pa.array([], pa.bool_())})


@dataclass(frozen=True)
class ItemStates:
    """The state of every expected item, aligned with the keys it was asked about."""

    keys: pa.Array
    #: One code per key: :data:`NEW`, :data:`STALE`, :data:`FAILED` or :data:`DONE`.
    state: np.ndarray

    def count(self, name: str) -> int:
        return int(np.count_nonzero(self.state == STATE_NAMES.index(name)))

    def counts(self) -> dict[str, int]:
        """``{"new": n, "stale": n, "failed": n, "done": n}``."""
        tally = np.bincount(self.state, minlength=len(STATE_NAMES))
        return {name: int(tally[code]) for code, name in enumerate(STATE_NAMES)}

    def keys_in(self, name: str) -> list[str]:
        """The keys in one state, in the order asked (for reasons and the runner's to-do list)."""
        return self.keys.filter(pa.array(self.state == STATE_NAMES.index(name))).to_pylist()


def latest_records(journal_dir: Path) -> pa.Table:
    """Key, fingerprint and ok of the latest record per key in a journal's flushed parts.

    Parts are named by write time, so concatenating them oldest first and keeping the
    last row of each key is "later records win", as :class:`vpipe.pipeline.journal.Journal`
    reads them.
    """
    parts = sorted(journal_dir.glob("part-*.parquet")) if journal_dir.exists() else []
    if not parts:
        return _EMPTY
    table = pa.concat_tables([pq.read_table(part, columns=_COLUMNS) for part in parts])
    if len(parts) == 1 and pc.count_distinct(table["key"]).as_py() == table.num_rows:
        return table
    position = pa.array(np.arange(table.num_rows))
    last = table.append_column("_row", position).group_by("key").aggregate([("_row", "max")])
    return table.take(last["_row_max"])


def classify(keys: Sequence[str] | pa.Array, expected: Sequence[str] | pa.Array, records: pa.Table) -> ItemStates:
    """Each key's state, given its expected fingerprint and the latest records (see :func:`latest_records`)."""
    keys = pa.array(keys, pa.string()) if not isinstance(keys, pa.Array) else keys
    expected = pa.array(expected, pa.string()) if not isinstance(expected, pa.Array) else expected
    if len(keys) != len(expected):
        raise ValueError(f"{len(keys)} keys but {len(expected)} expected fingerprints")
    where = pc.index_in(keys, value_set=records["key"].combine_chunks())
    found = pc.is_valid(where).to_numpy(zero_copy_only=False)
    at = where.fill_null(0)
    recorded_fp = pc.take(records["fingerprint"], at) if records.num_rows else pa.nulls(len(keys), pa.string())
    recorded_ok = pc.take(records["ok"], at) if records.num_rows else pa.nulls(len(keys), pa.bool_())
    same = pc.fill_null(pc.equal(recorded_fp, expected), False).to_numpy(zero_copy_only=False) & found
    ok = pc.fill_null(recorded_ok, False).to_numpy(zero_copy_only=False)
    state = np.full(len(keys), NEW, dtype=np.int8)
    state[found] = STALE
    state[same & ~ok] = FAILED
    state[same & ok] = DONE
    return ItemStates(keys=keys, state=state)


def stage_item_states(keys: Sequence[str] | pa.Array, expected: Sequence[str] | pa.Array, journal_dir: Path) -> ItemStates:
    """:func:`classify` against a journal on disk: what status, resume and a dry run share."""
    return classify(keys, expected, latest_records(journal_dir))
