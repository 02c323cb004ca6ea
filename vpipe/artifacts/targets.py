"""What a stage makes: a target owns its path, the fingerprint it should carry, and ``complete()``.

A stage's :meth:`~vpipe.pipeline.stage.Stage.output` is one of these, so the runner, ``vpipe
status`` and ``vpipe run --dry-run`` ask every stage the same questions whether it works
per video or over the whole dataset. Two kinds cover every artifact:

* :class:`MarkedTarget`: a marker file beside the stage's journal records the fingerprint
  the artifact was last written under (tables, feature sets, flow, the report);
* :class:`SelfCheckedTarget`: artifacts that carry their own fingerprints inside
  (codebooks and encodings, training runs, indexes) and say themselves whether they are
  current, so a marker could only disagree with them.

Either kind keeps, in the marker, the fingerprint's components (the stage's options and
its inputs' fingerprints) next to the fingerprint: a dry run diffs them against today's to
say *which* option or input changed.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpipe.artifacts.atomic import atomic_write_text


@dataclass
class Target(ABC):
    """An artifact of a stage and the marker that records what it was made from."""

    #: The file or directory the stage produces.
    path: Path
    #: ``artifact.json`` in the stage's state directory.
    marker: Path

    @abstractmethod
    def fingerprint(self) -> str:
        """The fingerprint the artifact should carry now; raises StageError when inputs are missing."""

    @abstractmethod
    def complete(self, fingerprint: str | None = None) -> bool:
        """Whether the artifact is there and current (``fingerprint``: one already computed)."""

    def recorded(self) -> dict[str, Any]:
        """What the marker holds: ``fingerprint``, ``components``; empty when never marked."""
        if not self.marker.is_file():
            return {}
        try:
            stored = json.loads(self.marker.read_text())
        except json.JSONDecodeError:
            return {}
        return stored if isinstance(stored, dict) else {}

    def mark(self, fingerprint: str, components: dict[str, Any]) -> None:
        """Record that the artifact now holds what ``fingerprint`` (made of ``components``) describes."""
        atomic_write_text(
            self.marker,
            json.dumps({"fingerprint": fingerprint, "artifact": str(self.path), "components": components}, default=str),
        )


@dataclass
class MarkedTarget(Target):
    """Current when the artifact exists and the marker holds today's fingerprint."""

    compute: Callable[[], str]

    def fingerprint(self) -> str:
        return self.compute()

    def complete(self, fingerprint: str | None = None) -> bool:
        if not self.path.exists():
            return False
        stored = self.recorded().get("fingerprint")
        return stored is not None and stored == (fingerprint or self.fingerprint())


@dataclass
class SelfCheckedTarget(Target):
    """An artifact that carries its fingerprints inside and checks them itself (``is_current``)."""

    compute: Callable[[], str]
    is_current: Callable[[], bool]

    def fingerprint(self) -> str:
        return self.compute()

    def complete(self, fingerprint: str | None = None) -> bool:
        return self.is_current()
