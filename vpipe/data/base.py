"""What a dataset adapter produces.

An adapter only lists videos and their labels and splits; it never opens a video.
Probing (frame counts, sizes) is a stage of its own, so that listing stays instant
and unreadable files become failure records instead of adapter errors.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol



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


@dataclass(frozen=True)
class MainJobDefaults:
    """What ``vpipe run`` uses on a dataset when the user says nothing else.

    Declared by the adapter that knows its videos (an optional ``main_job`` attribute;
    :func:`main_job_defaults` reads it), so the main job has no special case per dataset:
    collections of full-size videos take the papers' settings, and a collection of small,
    short clips says so here.
    """

    #: Options of the ``li3d`` sampler over its own defaults (clip length, crops).
    li3d_options: Mapping[str, Any] = field(default_factory=dict)
    #: Codebook size K of encode and of the soft-aggregation heads: the LI3D paper's 128.
    clusters: int = 128


#: The papers' settings, for every adapter that declares nothing.
PAPER_DEFAULTS = MainJobDefaults()


def main_job_defaults(adapter: object) -> MainJobDefaults:
    """``adapter.main_job`` when it declares one, else :data:`PAPER_DEFAULTS`."""
    return getattr(adapter, "main_job", PAPER_DEFAULTS)


#: Where the videos of a dataset that vpipe writes itself go when no root is given: this
#: folder of the dataset's workspace.
GENERATED_ROOT = "source"


def generator(adapter: object) -> Callable[..., Path] | None:
    """``adapter.generate`` when the adapter writes its own videos, else None.

    ``generate(root, **options)`` writes the tree under ``root`` unless an identical one is
    there already, so it runs before every listing. Such a dataset needs no ``--root``
    (:data:`GENERATED_ROOT`), and its options are recorded in ``dataset.json`` like the
    root and split. Declared by the adapter, so the stages have no special case for it.
    """
    return getattr(adapter, "generate", None)


class DatasetAdapter(Protocol):
    """A dataset recipe: ``prepare(root, split=...)`` lists the videos of a tree."""

    name: str
    #: One-line description shown by ``vpipe datasets``.
    summary: str
    #: Split numbers the dataset defines (``(1, 2, 3)`` for UCF101); ``(1,)`` when it has one.
    split_numbers: tuple[int, ...]
    # Optional: ``main_job: MainJobDefaults`` (see :func:`main_job_defaults`) and
    # ``generate(root, **options)`` for a dataset vpipe writes itself (see :func:`generator`).

    def prepare(self, root: Path, *, split: int = 1) -> list[VideoEntry]:
        """List every video under ``root`` with its 0-based label and split membership.

        Raises :class:`vpipe.errors.DatasetError` naming the file and line of any
        malformed or inconsistent split/label file.
        """
        ...
