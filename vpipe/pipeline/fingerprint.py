"""Content fingerprints that decide whether stored work is still valid.

A fingerprint is a short hash of canonical JSON, so equal configurations hash
equally on every machine and Python version (never Python's randomised ``hash``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def fingerprint(*parts: Any) -> str:
    """Hash JSON-serialisable parts (dicts are key-sorted) into 16 hex digits."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_fingerprint(path: str | Path) -> str:
    """Size and modification time: cheap, and changes whenever a video is replaced."""
    try:
        stat = os.stat(path)  # not Path(path).stat(): the Path object costs more than the call
    except OSError:
        return "missing"
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def stable_seed(*parts: Any) -> int:
    """A 63-bit seed derived from parts, identical across processes and machines."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") >> 1
