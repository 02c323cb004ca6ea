"""UCF101 with its three official train/test splits.

Layout (the official ``UCF101.rar`` and ``UCF101TrainTestSplits-RecognitionTask.zip``
unpacked side by side)::

    root/
      UCF-101/<Class>/v_<Class>_gGG_cCC.avi
      ucfTrainTestlist/
        classInd.txt        "1 ApplyEyeMakeup"                              (1-based)
        trainlist01.txt     "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"  (1-based)
        testlist01.txt      "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"
        trainlist02.txt  testlist02.txt  trainlist03.txt  testlist03.txt

The official files have CRLF endings and trailing blank lines; both are accepted.
Labels are the ``classInd.txt`` indices minus one. A train line's label must agree
with ``classInd.txt`` and with the folder of its path. ``video_id`` is the listed
path without suffix (``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01``), which is the
same for every split. Videos on disk that the chosen split lists nowhere are kept
as ``unused`` so that later stages see the whole collection.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from vpipe.data.base import VideoEntry
from vpipe.data.folder import Recipe, is_video, numbered_lines, require_dir
from vpipe.errors import DatasetError

VIDEO_DIR = "UCF-101"
LIST_DIR = "ucfTrainTestlist"


def read_class_index(path: Path) -> dict[str, int]:
    """Map class name to 0-based label from ``classInd.txt``.

    Indices must count up from 1 with no gap, as in the official file, so that the
    labels of the train lists mean what they say.
    """
    classes: dict[str, int] = {}
    for number, line in numbered_lines(path):
        fields = line.split()
        if len(fields) != 2 or not fields[0].isdigit():
            raise DatasetError(f'{path}:{number}: expected "<index> <ClassName>", got {line!r}')
        index, name = int(fields[0]), fields[1]
        if name in classes:
            raise DatasetError(f"{path}:{number}: class {name} listed twice; keep one line per class")
        if index != len(classes) + 1:
            raise DatasetError(
                f"{path}:{number}: index {index} where {len(classes) + 1} was expected; number classes 1, 2, 3, ..."
            )
        classes[name] = index - 1
    if not classes:
        raise DatasetError(f"{path}: no classes listed; restore the official classInd.txt")
    return classes


class UCF101(Recipe):
    """The UCF101 recipe: official class index and split lists over ``UCF-101/``."""

    name = "ucf101"
    summary = "UCF101: 101 action classes, 13,320 clips, three official train/test splits"
    split_numbers = (1, 2, 3)

    def list_videos(self, root: Path, split: int) -> list[VideoEntry]:
        """Every video under ``root/UCF-101`` with its split membership in ``split``."""
        video_dir, list_dir = root / VIDEO_DIR, root / LIST_DIR
        require_dir(video_dir, f"video folder {VIDEO_DIR}/")
        require_dir(list_dir, f"split folder {LIST_DIR}/")
        classes = read_class_index(list_dir / "classInd.txt")
        on_disk = self._scan(video_dir, classes, list_dir / "classInd.txt")
        train_list, test_list = list_dir / f"trainlist0{split}.txt", list_dir / f"testlist0{split}.txt"
        train = self._read_list(train_list, classes, on_disk, labelled=True)
        test = self._read_list(test_list, classes, on_disk, labelled=False)
        for rel, number in test.items():
            if rel in train:
                raise DatasetError(
                    f"{test_list}:{number}: {rel} is also in {train_list.name}:{train[rel]}; "
                    "a video belongs to one side of a split"
                )
        entries = []
        for rel, path in on_disk.items():
            class_name = rel.split("/", 1)[0]
            split_name = "train" if rel in train else "test" if rel in test else "unused"
            video_id = PurePosixPath(rel).with_suffix("").as_posix()
            entries.append(VideoEntry(video_id, path, classes[class_name], class_name, split_name))
        return sorted(entries, key=lambda entry: entry.video_id)

    @staticmethod
    def _scan(video_dir: Path, classes: dict[str, int], class_index: Path) -> dict[str, Path]:
        """Map ``<Class>/<file>`` to path for every video on disk, checking class folders."""
        on_disk: dict[str, Path] = {}
        for class_dir in sorted(video_dir.iterdir()):
            if not class_dir.is_dir() or class_dir.name.startswith("."):
                continue
            if class_dir.name not in classes:
                raise DatasetError(
                    f"{class_dir}: class folder not listed in {class_index}; add it there or remove the folder"
                )
            for path in class_dir.iterdir():
                if is_video(path):
                    on_disk[f"{class_dir.name}/{path.name}"] = path
        return on_disk

    @staticmethod
    def _read_list(
        path: Path, classes: dict[str, int], on_disk: dict[str, Path], *, labelled: bool
    ) -> dict[str, int]:
        """Map each listed ``<Class>/<file>`` to its line number, validating every line.

        Train lists carry a 1-based label that must agree with the class folder;
        test lists carry none.
        """
        expected = '"<Class>/<file>.avi <label>"' if labelled else '"<Class>/<file>.avi"'
        listed: dict[str, int] = {}
        for number, line in numbered_lines(path):
            fields = line.split()
            parts = fields[0].split("/")
            if len(fields) != (2 if labelled else 1) or len(parts) != 2 or (labelled and not fields[1].isdigit()):
                raise DatasetError(f"{path}:{number}: expected {expected}, got {line!r}")
            class_name = parts[0]
            if class_name not in classes:
                raise DatasetError(f"{path}:{number}: unknown class {class_name}; it is not in classInd.txt")
            if labelled and int(fields[1]) != classes[class_name] + 1:
                raise DatasetError(
                    f"{path}:{number}: label {fields[1]} disagrees with classInd.txt, where {class_name} is "
                    f"{classes[class_name] + 1}; fix the label or the path"
                )
            rel = fields[0]
            if rel not in on_disk:
                raise DatasetError(f"{path}:{number}: listed video {VIDEO_DIR}/{rel} does not exist; restore it")
            if rel in listed:
                raise DatasetError(f"{path}:{number}: {rel} already listed at line {listed[rel]}; remove the repeat")
            listed[rel] = number
        return listed
