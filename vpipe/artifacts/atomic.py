"""The single atomic write: temporary file in the target's directory, fsync, rename.

A rename within one directory is atomic on POSIX file systems, so readers see the old
file or the new one, never half of one. The file is fsynced before the rename (else a
crash can leave the new name pointing at empty blocks) and the directory after it (else
the rename itself can be lost). Writers that need the file open across several calls
(an HDF5 shard filled clip by clip) use :func:`temp_path`, :func:`commit` and
:func:`discard`; everyone else uses :func:`atomic_path` or the text/bytes shortcuts.

The temporary name is ``.<name>.tmp`` (``.<stem>.tmp<suffix>`` with ``keep_suffix``,
for libraries that pick a format from the suffix), deterministic so that a rerun of
the same writer replaces a killed writer's leftover, and hidden so that globs for
artifacts never match it; stages sweep ``.*.tmp`` leftovers when they rebuild an index.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from vpipe.errors import VpipeError


class DiskFullError(VpipeError):
    """A write ran out of space (or hit a file-size limit); no partial file is left."""


_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def temp_path(path: Path, *, keep_suffix: bool = False) -> Path:
    """The name ``path`` is written under before :func:`commit` renames it."""
    path = Path(path)
    if keep_suffix:
        return path.with_name(f".{path.stem}.tmp{path.suffix}")
    return path.with_name(f".{path.name}.tmp")


def _fsync_path(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path) -> None:
    """Make the finished temporary file ``tmp`` durable and rename it to ``path``."""
    try:
        _fsync_path(tmp, os.O_RDONLY)
        os.replace(tmp, path)
        _fsync_path(Path(path).parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as error:
        discard(tmp)
        raise _translated(error, path) from error


def discard(tmp: Path) -> None:
    """Delete an unfinished temporary file (a failed or abandoned write)."""
    Path(tmp).unlink(missing_ok=True)


def is_disk_full(error: BaseException) -> bool:
    """Out of space or over a size limit; h5py reports these without an errno, in words."""
    if isinstance(error, OSError) and error.errno in _FULL:
        return True
    text = str(error).lower()
    return "no space left" in text or "file too large" in text or "disk quota" in text


def _translated(error: BaseException, path: Path) -> BaseException:
    if is_disk_full(error):
        return DiskFullError(f"disk full at {path}: free space (or raise the file-size limit) and rerun; "
                             f"finished work is kept and the rerun resumes")
    return error


@contextmanager
def atomic_path(path: Path, *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield the temporary path to write; on a normal exit commit it to ``path``.

    On an exception the temporary file is deleted and ``path`` is left as it was; a
    full disk becomes one :class:`DiskFullError` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path, keep_suffix=keep_suffix)
    try:
        yield tmp
    except BaseException as error:
        discard(tmp)
        translated = _translated(error, path)
        if translated is error:
            raise
        raise translated from error
    commit(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


_Open = TypeVar("_Open", bound="Closing")


class Closing:
    """``with`` for an open artifact: leaving the block calls :meth:`close`, or :meth:`abort`
    when an exception leaves it.

    A reader only closes. A writer's ``close`` commits the temporary file and its
    ``abort`` discards it, so an exception inside the block never leaves a file that
    looks finished.
    """

    def __enter__(self: _Open) -> _Open:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def close(self) -> object:
        raise NotImplementedError

    def abort(self) -> None:
        self.close()
