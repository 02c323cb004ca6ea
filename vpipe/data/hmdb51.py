"""HMDB51 with its three official 70/30 splits.

Layout (the official ``hmdb51_org.rar`` class archives unpacked, and
``test_train_splits.rar`` unpacked either into ``root`` or as its own folder)::

    root/
      <class>/<video>.avi
      <class>_test_split1.txt ... <class>_test_split3.txt
        or testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt

Each split file line is ``<video>.avi <flag>`` with flag 0 (unused), 1 (train) or
2 (test). CRLF endings, trailing spaces and blank lines are accepted. The classes
are the ``<class>`` prefixes of the chosen split's files, sorted alphabetically and
numbered from 0. ``video_id`` is ``<class>/<video without suffix>``. Videos on disk
that their class's split file does not list are ``unused``, like flag 0.

A folder of videos with no split file for the chosen split is an error rather than
silently dropped, because it usually means the split archive was only partly
unpacked.
"""

from __future__ import annotations

import re
from pathlib import Path

from vpipe.data.base import VideoEntry
from vpipe.data.folder import Recipe, is_video, numbered_lines, require_dir
from vpipe.errors import DatasetError

SPLIT_DIR = "testTrainMulti_7030_splits"
_SPLIT_FILE = re.compile(r"(?P<cls>.+)_test_split(?P<split>[0-9]+)\.txt")
_FLAGS = {"0": "unused", "1": "train", "2": "test"}


def find_split_files(root: Path, split: int) -> dict[str, Path]:
    """Map class name to its split file for ``split``, from ``root`` and its split folder."""
    found: dict[str, Path] = {}
    for folder in (root, root / SPLIT_DIR):
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("*_test_split*.txt")):
            match = _SPLIT_FILE.fullmatch(path.name)
            if match is None or int(match["split"]) != split:
                continue
            if match["cls"] in found:
                raise DatasetError(f"{path}: duplicates {found[match['cls']]}; keep one copy of each split file")
            found[match["cls"]] = path
    if not found:
        raise DatasetError(
            f"{root}: no <class>_test_split{split}.txt files here or in {SPLIT_DIR}/; unpack the official split archive"
        )
    return found


class HMDB51(Recipe):
    """The HMDB51 recipe: per-class split files with 0/1/2 flags."""

    name = "hmdb51"
    summary = "HMDB51: 51 action classes, 6,766 clips, three official 70/30 splits"
    split_numbers = (1, 2, 3)

    def list_videos(self, root: Path, split: int) -> list[VideoEntry]:
        """Every video under ``root``'s class folders with its membership in ``split``."""
        require_dir(root, "dataset folder")
        split_files = find_split_files(root, split)
        self._check_class_folders(root, split_files, split)
        entries = []
        for label, class_name in enumerate(sorted(split_files)):
            class_dir = root / class_name
            on_disk = {path.name: path for path in class_dir.iterdir() if is_video(path)} if class_dir.is_dir() else {}
            flags = self._read_split_file(split_files[class_name], class_dir, on_disk)
            for file_name, path in on_disk.items():
                video_id = f"{class_name}/{path.stem}"
                entries.append(VideoEntry(video_id, path, label, class_name, flags.get(file_name, "unused")))
        return sorted(entries, key=lambda entry: entry.video_id)

    @staticmethod
    def _check_class_folders(root: Path, split_files: dict[str, Path], split: int) -> None:
        """Reject video folders that the split files do not know (an unknown class)."""
        for folder in sorted(root.iterdir()):
            if folder.name in split_files or folder.name == SPLIT_DIR or folder.name.startswith("."):
                continue
            if folder.is_dir() and any(is_video(path) for path in folder.iterdir()):
                raise DatasetError(
                    f"{folder}: class folder has no {folder.name}_test_split{split}.txt; "
                    "add its split file or move the folder out of the dataset root"
                )

    @staticmethod
    def _read_split_file(path: Path, class_dir: Path, on_disk: dict[str, Path]) -> dict[str, str]:
        """Map each listed file name to ``train``/``test``/``unused``, validating every line."""
        flags: dict[str, str] = {}
        first_line: dict[str, int] = {}
        for number, line in numbered_lines(path):
            fields = line.rsplit(maxsplit=1)
            if len(fields) != 2 or fields[1] not in _FLAGS or "/" in fields[0]:
                raise DatasetError(f'{path}:{number}: expected "<video>.avi <0|1|2>", got {line!r}')
            file_name, flag = fields
            if file_name not in on_disk:
                raise DatasetError(f"{path}:{number}: listed video {class_dir / file_name} does not exist; restore it")
            if file_name in flags:
                raise DatasetError(
                    f"{path}:{number}: {file_name} already listed at line {first_line[file_name]} "
                    f"as {flags[file_name]}; keep one line per video"
                )
            flags[file_name], first_line[file_name] = _FLAGS[flag], number
        return flags
