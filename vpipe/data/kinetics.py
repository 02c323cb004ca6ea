"""Kinetics (400, 600, 700) from the official annotation CSVs and downloaded clips.

Layout::

    root/
      annotations/*.csv   (or *.csv directly in root when there is no annotations/)
      train/<clip>.mp4      or  train/<any folder>/<clip>.mp4
      val/<clip>.mp4        or  val/<any folder>/<clip>.mp4      (validate/ also searched)
      test/<clip>.mp4       or  test/<any folder>/<clip>.mp4

    <clip> = <youtube_id>_<time_start:06d>_<time_end:06d>   (.mp4, .mkv or .webm)

Each CSV starts with a header naming at least ``youtube_id,time_start,time_end,split``
and usually ``label`` (extra columns such as ``is_cc`` are ignored); rows are
``label,youtube_id,time_start,time_end,split`` with split ``train``, ``val`` or
``validate`` (both give ``val``) or ``test``. The row's ``split`` column decides
membership, not the file name. Rows without a label (the unlabelled test CSV of
Kinetics-400) are left out with a warning, since they cannot be trained or scored.

Clips are looked up flat in the split folder and one folder below it. The folder
name is not read: downloaders name label folders differently (spaces, underscores,
quotes), and the label comes from the CSV anyway. Labels are the distinct labels
of the ``train`` rows, sorted alphabetically and numbered from 0.

``video_id`` is the clip name ``<youtube_id>_<start:06d>_<end:06d>``, not the path,
so the same clips share ids (and cached features) whichever layout a downloader
produced.

Kinetics always has clips that could not be downloaded. Those are not errors of
the annotation files: they are listed at their expected flat path
``<split>/<clip>.mp4``, so the probe stage records each one in ``failures.parquet``
("file not found") and every other clip is processed; a ``logging`` warning counts
them up front.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vpipe.data.base import VideoEntry
from vpipe.data.folder import Recipe, is_video, read_text, require_dir
from vpipe.errors import DatasetError

logger = logging.getLogger(__name__)

_REQUIRED = ("youtube_id", "time_start", "time_end", "split")
_SPLITS = {"train": "train", "val": "val", "validate": "val", "test": "test"}
_SPLIT_DIRS = {"train": ("train",), "val": ("val", "validate"), "test": ("test",)}
_SUFFIXES = (".mp4", ".mkv", ".webm")


@dataclass(frozen=True)
class _Row:
    """One labelled annotation row, with where it was read for error messages."""

    clip: str
    label_name: str
    split: str
    where: str


def find_csvs(root: Path) -> list[Path]:
    """The annotation CSVs: ``root/annotations/*.csv`` if that folder exists, else ``root/*.csv``."""
    folder = root / "annotations" if (root / "annotations").is_dir() else root
    found = sorted(folder.glob("*.csv"))
    if not found:
        raise DatasetError(f"{folder}: no annotation CSV found; put the official train/validate/test CSVs there")
    return found


def _seconds(value: str) -> int | None:
    """Whole seconds from ``"10"`` or ``"10.0"``; ``None`` for anything else."""
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if number.is_integer() and number >= 0 else None


def read_rows(path: Path) -> Iterator[_Row]:
    """Yield the labelled rows of one annotation CSV, validating every line."""
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    columns = reader.fieldnames or []
    missing = [name for name in _REQUIRED if name not in columns]
    if missing:
        raise DatasetError(
            f"{path}:1: header lacks {', '.join(missing)}; expected label,youtube_id,time_start,time_end,split"
        )
    unlabelled = 0
    for row in reader:
        number = reader.line_num
        if None in row or None in row.values():
            raise DatasetError(f"{path}:{number}: expected {len(columns)} comma-separated fields as in the header")
        if not any(value.strip() for value in row.values()):
            continue
        split = _SPLITS.get(row["split"].strip())
        start, end = _seconds(row["time_start"]), _seconds(row["time_end"])
        youtube_id = row["youtube_id"].strip()
        if split is None or start is None or end is None or not youtube_id:
            raise DatasetError(
                f"{path}:{number}: expected youtube_id, whole-second times and split train/val/validate/test, "
                f"got {','.join(row[name] for name in _REQUIRED)!r}"
            )
        label_name = (row.get("label") or "").strip()
        if not label_name:
            unlabelled += 1
            continue
        yield _Row(f"{youtube_id}_{start:06d}_{end:06d}", label_name, split, f"{path}:{number}")
    if unlabelled:
        logger.warning("%s: %d rows have no label and are left out", path, unlabelled)


def index_clips(root: Path, split: str) -> dict[str, Path]:
    """Map clip name to path for the videos of one split, flat or one folder down."""
    clips: dict[str, Path] = {}
    for folder in (root / name for name in _SPLIT_DIRS[split]):
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            candidates = entry.iterdir() if entry.is_dir() else (entry,)
            for path in candidates:
                if path.suffix.lower() not in _SUFFIXES or not is_video(path):
                    continue
                if path.stem in clips:
                    raise DatasetError(f"{path}: same clip as {clips[path.stem]}; delete one copy")
                clips[path.stem] = path
    return clips


class Kinetics(Recipe):
    """The Kinetics recipe: annotation CSVs plus whichever clips were downloaded."""

    name = "kinetics"
    summary = "Kinetics-400/600/700: official annotation CSVs; clips missing from disk are recorded as failures"

    def list_videos(self, root: Path, split: int) -> list[VideoEntry]:
        """The downloaded clips of every annotated row under ``root``."""
        require_dir(root, "dataset folder")
        rows = self._unique_rows(root)
        classes = sorted({row.label_name for row in rows.values() if row.split == "train"})
        if not classes:
            raise DatasetError(f"{root}: no train rows in the annotation CSVs; labels are defined by the train CSV")
        labels = {name: label for label, name in enumerate(classes)}
        clips = {split_name: index_clips(root, split_name) for split_name in _SPLIT_DIRS}
        entries, missing = [], []
        for clip, row in sorted(rows.items()):
            if row.label_name not in labels:
                raise DatasetError(f"{row.where}: unknown class {row.label_name!r}; no train row has this label")
            path = clips[row.split].get(clip)
            if path is None:
                missing.append(clip)
                path = root / _SPLIT_DIRS[row.split][0] / f"{clip}.mp4"
            entries.append(VideoEntry(clip, path, labels[row.label_name], row.label_name, row.split))
        if rows and len(missing) == len(rows):
            raise DatasetError(
                f"{root}: none of the {len(rows)} annotated clips is on disk; expected e.g. "
                f"{root / 'train' / (next(iter(rows)) + '.mp4')}"
            )
        if missing:
            logger.warning(
                "%s: %d of %d annotated clips are not on disk; they will be recorded as failures",
                root,
                len(missing),
                len(rows),
            )
        return entries

    @staticmethod
    def _unique_rows(root: Path) -> dict[str, _Row]:
        """Gather rows from every CSV; the same clip twice must agree on label and split."""
        rows: dict[str, _Row] = {}
        for path in find_csvs(root):
            for row in read_rows(path):
                seen = rows.get(row.clip)
                if seen is not None and (seen.label_name, seen.split) != (row.label_name, row.split):
                    raise DatasetError(
                        f"{row.where}: clip {row.clip} is {row.label_name!r}/{row.split} here but "
                        f"{seen.label_name!r}/{seen.split} at {seen.where}; keep one row per clip"
                    )
                rows.setdefault(row.clip, row)
        return rows
