"""Videos listed in a CSV file.

Layout: ``root`` is the CSV file itself, or a directory holding ``videos.csv``::

    path,label,split
    clips/jump_01.mp4,jump,train
    /data/extra/run_07.mp4,run,test

The header names ``path`` and ``label`` and optionally ``split``, in any order; any
other column is an error, so that a misspelt ``split`` column is not silently
replaced by the default split. Relative paths are resolved against the CSV's own
directory, absolute paths are taken as they are; every listed file must exist. A
relative path that climbs out of the CSV's directory with ``..`` is an error: its
``video_id`` would become a machine-specific absolute path, and a list that reaches
outside its tree is more often hostile or mistaken than meant; a file elsewhere is
listed by its absolute path. Paths are normalised as text, not resolved, so a tree
whose folders are symbolic links to shared storage keeps working.

``label`` is either a class name in every row or a non-negative integer in every
row. Names are sorted and numbered from 0; integers are taken as the 0-based label
as given, with the number as its name. Mixing the two is an error because ``"10"``
would sort before ``"2"``.

``split`` is one of ``train``, ``val``, ``test``, ``unused`` in every row. Without
the column, the hold-out rule of the ``folder`` adapter applies (every fifth video
per label, by ``video_id``, is ``test``).

``video_id`` is the path relative to the CSV's directory without suffix; for a file
outside that directory it is the absolute path without suffix and leading ``/``.
Both depend only on the CSV's text, not on the machine's working directory.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from vpipe.data.base import VideoEntry
from vpipe.splits import SPLITS
from vpipe.data.folder import Recipe, holdout, read_text
from vpipe.errors import DatasetError

DEFAULT_NAME = "videos.csv"
_REQUIRED = ("path", "label")
_ALLOWED = frozenset({"path", "label", "split"})


@dataclass(frozen=True)
class _Row:
    """One validated CSV row before labels are numbered."""

    video_id: str
    path: Path
    label: str
    split: str | None
    number: int


def locate(root: Path) -> Path:
    """The CSV file ``root`` names: itself, or ``videos.csv`` inside it."""
    path = root / DEFAULT_NAME if root.is_dir() else root
    if not path.is_file():
        raise DatasetError(f"{path}: CSV file not found; pass the CSV or a folder holding {DEFAULT_NAME}")
    return path


def video_id_for(path: Path, base: Path) -> str:
    """A machine-independent id: relative to ``base`` when inside it, else the absolute path."""
    stem = path.with_suffix("")
    return stem.relative_to(base).as_posix() if stem.is_relative_to(base) else stem.as_posix().lstrip("/")


def read_rows(csv_path: Path) -> list[_Row]:
    """Read and validate every row; ids must be unique and files must exist."""
    base = csv_path.parent
    rows: list[_Row] = []
    seen: dict[str, int] = {}
    reader = csv.DictReader(io.StringIO(read_text(csv_path), newline=""))
    columns = [name.strip() for name in reader.fieldnames or []]
    unknown = sorted(set(columns) - _ALLOWED)
    if unknown or any(name not in columns for name in _REQUIRED) or len(set(columns)) != len(columns):
        raise DatasetError(f"{csv_path}:1: header must be path,label[,split], got {','.join(columns)!r}")
    reader.fieldnames = columns
    for row in reader:
        number = reader.line_num
        if None in row or None in row.values():
            raise DatasetError(
                f"{csv_path}:{number}: expected {len(columns)} comma-separated fields as in the header"
            )
        values = {name: value.strip() for name, value in row.items()}
        if not any(values.values()):
            continue
        if not values["path"] or not values["label"]:
            raise DatasetError(f"{csv_path}:{number}: path and label must not be empty")
        split = values.get("split")
        if split is not None and split not in SPLITS:
            raise DatasetError(f"{csv_path}:{number}: split {split!r} is not one of {', '.join(SPLITS)}")
        path = Path(values["path"]).expanduser()
        if not path.is_absolute() and Path(os.path.normpath(path)).parts[:1] == ("..",):
            raise DatasetError(
                f"{csv_path}:{number}: path {values['path']!r} climbs out of {base} with '..'; "
                f"list files outside the CSV's folder by absolute path"
            )
        path = Path(os.path.normpath(path if path.is_absolute() else base / path))
        if not path.is_file():
            raise DatasetError(f"{csv_path}:{number}: listed video {path} does not exist; fix the path")
        video_id = video_id_for(path, base)
        if video_id in seen:
            raise DatasetError(f"{csv_path}:{number}: {video_id} already listed at line {seen[video_id]}")
        seen[video_id] = number
        rows.append(_Row(video_id, path, values["label"], split, number))
    if not rows:
        raise DatasetError(f"{csv_path}: no rows below the header; list one video per line")
    return rows


def _is_integer(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` alone accepts characters such as ``"²"`` that ``int`` rejects."""
    return text.isascii() and text.isdigit()


def number_labels(rows: list[_Row], csv_path: Path) -> dict[str, tuple[int, str]]:
    """Map each label text to ``(label, label_name)``: sorted names, or integers as given."""
    integer = _is_integer(rows[0].label)
    for row in rows:
        if _is_integer(row.label) != integer:
            kind = "a name" if integer else "an integer"
            raise DatasetError(
                f"{csv_path}:{row.number}: label {row.label!r} is {kind} but line {rows[0].number} "
                f"is not; use class names in every row or integers in every row"
            )
    if integer:
        return {row.label: (int(row.label), str(int(row.label))) for row in rows}
    return {name: (label, name) for label, name in enumerate(sorted({row.label for row in rows}))}


class CsvList(Recipe):
    """A CSV of ``path,label[,split]`` rows."""

    name = "csv"
    summary = "A CSV of path,label[,split] rows; without split, every 5th video per label is test"

    def list_videos(self, root: Path, split: int) -> list[VideoEntry]:
        """The videos of the CSV at (or in) ``root``."""
        csv_path = locate(root)
        rows = read_rows(csv_path)
        labels = number_labels(rows, csv_path)
        default = holdout((row.video_id, labels[row.label][0]) for row in rows if row.split is None)
        entries = [
            VideoEntry(row.video_id, row.path, *labels[row.label], row.split or default[row.video_id])
            for row in rows
        ]
        return sorted(entries, key=lambda entry: entry.video_id)
