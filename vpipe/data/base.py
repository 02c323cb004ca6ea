"""What a dataset adapter produces.

An adapter only lists videos and their labels and splits; it never opens a video.
Probing (frame counts, sizes) is a stage of its own, so that listing stays instant
and unreadable files become failure records instead of adapter errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol



@dataclass(frozen=True)
class VideoEntry:
    """One video of a dataset, as listed by its adapter.

    ``video_id`` must be stable across runs and machines (derived from the path
    relative to the dataset root, never from an absolute path or a listing order),
    because every artifact downstream is keyed by it.
    """

    video_id: str
    path: Path
    label: int
    label_name: str
    split: str


class DatasetAdapter(Protocol):
    """A dataset recipe: ``prepare(root, split=...)`` lists the videos of a tree."""

    name: str
    #: One-line description shown by ``vpipe datasets``.
    summary: str
    #: Split numbers the dataset defines (``(1, 2, 3)`` for UCF101); ``(1,)`` when it has one.
    split_numbers: tuple[int, ...]

    def prepare(self, root: Path, *, split: int = 1) -> list[VideoEntry]:
        """List every video under ``root`` with its 0-based label and split membership.

        Raises :class:`vpipe.errors.DatasetError` naming the file and line of any
        malformed or inconsistent split/label file.
        """
        ...
