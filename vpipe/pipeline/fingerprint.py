"""Content fingerprints that decide whether stored work is still valid.

A fingerprint is a short hash of canonical JSON, so equal configurations hash
equally on every machine and Python version (never Python's randomised ``hash``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def canonical_json(value: Any) -> str:
    """The JSON text :func:`fingerprint` hashes a part as (keys sorted, no spaces)."""
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def fingerprint(*parts: Any) -> str:
    """Hash JSON-serialisable parts (dicts are key-sorted) into 16 hex digits."""
    return fingerprint_of_json(canonical_json(parts))


def fingerprint_of_json(blob: str) -> str:
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: Path -> file fingerprint while :func:`one_stat_per_file` is active, else None.
_snapshot: dict[str, str] | None = None


@contextmanager
def one_stat_per_file() -> Iterator[None]:
    """Within the block, :func:`file_fingerprint` stats each path once.

    For a snapshot that lists several stages over the same videos (``vpipe status``:
    probe, flow and each extract stage fingerprint every source file): the stages
    agree on one view of the files and a Kinetics-sized tree is stat-ed once, not four
    times. Not for a run, whose later stages must see files replaced meanwhile.
    """
    global _snapshot
    outer, _snapshot = _snapshot, {} if _snapshot is None else _snapshot
    try:
        yield
    finally:
        _snapshot = outer


def file_fingerprint(path: str | Path) -> str:
    """Size and modification time: cheap, and changes whenever a video is replaced."""
    if _snapshot is not None:
        key = str(path)
        cached = _snapshot.get(key)
        if cached is None:
            cached = _snapshot[key] = _stat_fingerprint(key)
        return cached
    return _stat_fingerprint(path)


def _stat_fingerprint(path: str | Path) -> str:
    try:
        stat = os.stat(path)  # not Path(path).stat(): the Path object costs more than the call
    except OSError:
        return "missing"
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed derived from parts, identical across processes and machines."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1
