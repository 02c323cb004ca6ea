"""Whole-file digests: the size and SHA-256 recorded for every stored data file.

HDF5's Fletcher-32 filter catches a damaged chunk when it is read; the whole-file
digest catches everything else (a damaged header, a truncated or swapped file) and
lets ``vpipe verify`` check a file without interpreting it. SHA-256 from hashlib is
used rather than a faster non-cryptographic hash: it needs no extra dependency and
reads at several hundred MB/s per core, faster than the disks that hold the caches
(see BENCHMARKS.md, ``bench/verify.py``).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

#: Bytes read per call: large enough to amortise the call, small enough to bound memory.
_BLOCK = 1 << 20


@dataclass(frozen=True)
class FileDigest:
    """What a file was when it was written."""

    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, object]:
        return {"bytes": self.bytes, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FileDigest:
        return cls(bytes=int(data["bytes"]), sha256=str(data["sha256"]))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in bounded blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def file_digest(path: Path) -> FileDigest:
    return FileDigest(bytes=os.stat(path).st_size, sha256=sha256_file(path))


def digest_file_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + ".sha256")


def write_digest_file(path: Path) -> str:
    """Record ``path``'s SHA-256 beside it as ``<name>.sha256``, in ``sha256sum`` format.

    For single-file artifacts (codebooks, encodings, checkpoints) that have no index to
    hold their digest; ``sha256sum -c <name>.sha256`` checks them without vpipe.
    """
    from vpipe.artifacts.atomic import atomic_write_text

    digest = sha256_file(path)
    atomic_write_text(digest_file_path(path), f"{digest}  {Path(path).name}\n")
    return digest


def read_digest_file(path: Path) -> str | None:
    """The SHA-256 recorded by :func:`write_digest_file`, or None if there is none."""
    try:
        text = digest_file_path(path).read_text()
    except OSError:
        return None
    return text.split()[0] if text.strip() else None
