"""Artifacts on disk: the one way files are written, and how their content is checked.

Every file vpipe stores (tables, journal parts, shards, codebooks, encodings, indexes,
checkpoints) is written through :mod:`vpipe.artifacts.atomic`, so a reader sees the
old file or the new one and a killed or out-of-space writer leaves no partial file;
:mod:`vpipe.artifacts.digest` gives the size and SHA-256 recorded next to each
stored file, against which ``vpipe verify`` checks it. What crosses layers is a typed
record that reads and writes itself: the dataset configuration
(:mod:`~vpipe.artifacts.records`), the manifest's and plans' rows
(:mod:`~vpipe.artifacts.rows`), flow and feature provenance
(:mod:`~vpipe.artifacts.provenance`) and a finished run (:mod:`~vpipe.artifacts.run_record`).
"""

from vpipe.artifacts.atomic import (
    Closing,
    DiskFullError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_text,
    commit,
    discard,
    temp_path,
)
from vpipe.artifacts.digest import (
    FileDigest,
    digest_file_path,
    file_digest,
    read_digest_file,
    sha256_file,
    write_digest_file,
)

__all__ = [
    "Closing",
    "DiskFullError",
    "FileDigest",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "commit",
    "digest_file_path",
    "discard",
    "file_digest",
    "read_digest_file",
    "sha256_file",
    "temp_path",
    "write_digest_file",
]
