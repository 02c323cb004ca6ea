"""Any folder of clips, one subfolder per class.

Layout::

    root/
      <class>/<video>.avi | .mp4 | .mkv | .webm | .mov    (suffix case-insensitive)

Only the direct subfolders of ``root`` are classes and only their direct files are
videos; files with other suffixes (thumbnails, notes) and hidden entries are ignored,
and a subfolder without any video is not a class. Labels are the class folder names
sorted, numbered from 0. ``video_id`` is ``<class>/<file name without suffix>``.

A plain folder carries no split information, so every class is split by a fixed
hold-out rule (:func:`holdout`): its videos sorted by ``video_id``, every fifth one
(the 5th, 10th, ...) is ``test`` and the rest ``train``. The rule depends only on
names, so the same tree always gives the same split and train/evaluate works with no
extra file, and adding videos to one class never moves another class's videos.

The module also holds the small listing rules every adapter shares: which suffixes
are videos, how split/list text files are read line by line, and the split-number
check.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from vpipe.data.base import VideoEntry
from vpipe.errors import ConfigError, DatasetError

#: File suffixes (lower case) that adapters treat as videos.
VIDEO_SUFFIXES = frozenset({".avi", ".mp4", ".mkv", ".webm", ".mov"})

#: One video in this many per class goes to ``test`` under the hold-out rule.
HOLDOUT_EVERY = 5


class _HasSplits(Protocol):
    name: str
    split_numbers: tuple[int, ...]


def is_video(path: Path) -> bool:
    """Whether ``path`` names a visible file with a video suffix."""
    return path.suffix.lower() in VIDEO_SUFFIXES and not path.name.startswith(".") and path.is_file()


def check_split_number(adapter: _HasSplits, split: int) -> None:
    """Reject a split number the dataset does not define, before any file is read."""
    if split not in adapter.split_numbers:
        choices = ", ".join(str(n) for n in adapter.split_numbers)
        raise ConfigError(f"dataset {adapter.name} has no split {split}; use --split {choices}")


class Recipe:
    """Base of the adapters that list a tree under ``--root``.

    :meth:`prepare` rejects a split number the dataset does not define before any file is
    read, and resolves the root once; a recipe lists the tree in :meth:`list_videos`.
    """

    name: str
    summary: str
    split_numbers: tuple[int, ...] = (1,)

    def prepare(self, root: Path, *, split: int = 1) -> list[VideoEntry]:
        check_split_number(self, split)
        return self.list_videos(Path(root).expanduser().resolve(), split)

    def list_videos(self, root: Path, split: int) -> list[VideoEntry]:
        """Every video under the absolute ``root`` with its 0-based label and its membership in ``split``."""
        raise NotImplementedError


def require_dir(path: Path, what: str) -> None:
    """Fail early, naming the directory, when a documented directory is absent."""
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} not found; check --root against the documented layout")


def read_text(path: Path) -> str:
    """The whole text of a split, list or CSV file, as a :class:`DatasetError` when unusable.

    Decoding up front turns a stray Latin-1 byte into a message naming the file instead
    of a traceback from deep inside a parser. A UTF-8 byte-order mark (spreadsheet
    exports) is dropped so that it does not glue itself to the first column name.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: file not found; check --root against the documented layout")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err.reason}); save it as UTF-8") from None


def numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for the non-blank lines of a split or list file.

    Official split files come with CRLF endings, trailing spaces and blank lines;
    they are normalised here so that every parser sees clean lines while error
    messages keep the line numbers of the file as a text editor shows them.
    """
    for number, raw in enumerate(read_text(path).splitlines(), start=1):
        line = raw.strip()
        if line:
            yield number, line


def holdout(videos: Iterable[tuple[str, int]]) -> dict[str, str]:
    """Map each ``(video_id, label)`` to ``train`` or ``test`` by the hold-out rule.

    Within each label the ids are sorted and every :data:`HOLDOUT_EVERY`-th goes to
    ``test``, so each class keeps the same share of test videos.
    """
    by_label: dict[int, list[str]] = defaultdict(list)
    for video_id, label in videos:
        by_label[label].append(video_id)
    splits: dict[str, str] = {}
    for ids in by_label.values():
        for position, video_id in enumerate(sorted(ids), start=1):
            splits[video_id] = "test" if position % HOLDOUT_EVERY == 0 else "train"
    return splits


class Folder(Recipe):
    """``root/<class>/<video>`` trees with a fixed stratified hold-out split."""

    name = "folder"
    summary = "Any folder of clips, one subfolder per class; every 5th video per class is test"

    def list_videos(self, root: Path, split: int) -> list[VideoEntry]:
        """The videos of every class folder under ``root``."""
        require_dir(root, "dataset folder")
        videos = self._scan(root)
        classes = sorted({class_name for class_name, _ in videos.values()})
        labels = {name: label for label, name in enumerate(classes)}
        label_of = {video_id: labels[class_name] for video_id, (class_name, _) in videos.items()}
        splits = holdout(label_of.items())
        folders = {name: root / name for name in classes}
        return [
            VideoEntry(video_id, folders[class_name] / file_name, label_of[video_id], class_name, splits[video_id])
            for video_id, (class_name, file_name) in sorted(videos.items())
        ]

    @staticmethod
    def _scan(root: Path) -> dict[str, tuple[str, str]]:
        """Map ``video_id`` to (class folder, file name) for every video one level below ``root``.

        One ``os.scandir`` per folder, and names compared as strings: the directory
        entries say what is a file or a folder without a ``stat`` each, which at
        Kinetics size (240k files) is what a listing costs.
        """
        videos: dict[str, tuple[str, str]] = {}
        for entry in sorted(os.scandir(root), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if _is_video(entry):
                raise DatasetError(f"{entry.path}: video directly under the dataset folder; move it into a class subfolder")
            if not entry.is_dir():
                continue
            for file in sorted(os.scandir(entry.path), key=lambda e: e.name):
                if not _is_video(file):
                    continue
                video_id = f"{entry.name}/{os.path.splitext(file.name)[0]}"
                if video_id in videos:
                    raise DatasetError(
                        f"{file.path}: same name as {videos[video_id][1]} in {entry.path}; rename one, ids ignore the suffix"
                    )
                videos[video_id] = (entry.name, file.name)
        if not videos:
            raise DatasetError(f"{root}: no <class>/<video> files found; put each class's videos in its own subfolder")
        return videos


def _is_video(entry: os.DirEntry) -> bool:
    """:func:`is_video` of a directory entry, without a ``stat`` unless it is a link."""
    return os.path.splitext(entry.name)[1].lower() in VIDEO_SUFFIXES and not entry.name.startswith(".") and entry.is_file()
