"""Typed, frozen records for what crosses layers, each reading and writing itself.

A record is a frozen dataclass whose fields are the keys of its stored form. Reading
checks the keys against the fields before anything else sees the data: a key the
record does not know, or a required one that is missing, is one :class:`RecordError`
naming the file (or wherever the data came from) and the keys, instead of a
``KeyError`` three layers away. Fields with a default are the keys that older vpipe
versions did not write yet; their default says "not recorded", so files written by
every earlier version keep loading. ``to_dict`` gives back the stored form key for key,
so a record read from a file this version wrote, and written again, is the same file.

This module holds the machinery and the dataset configuration; the provenance of flow
caches and feature sets is in :mod:`vpipe.artifacts.provenance`, the row schemas of the
manifest and plans in :mod:`vpipe.artifacts.rows`, a trained run in
:mod:`vpipe.artifacts.run_record`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from vpipe.artifacts.atomic import atomic_write_text
from vpipe.errors import VpipeError

R = TypeVar("R", bound="Record")


class RecordError(VpipeError):
    """A stored record whose keys are not the ones its type has: unknown or missing."""


def check_keys(
    kind: str, data: Mapping[str, Any], known: set[str], required: set[str], source: str,
    fix: str = "rerun the command that writes it",
) -> None:  # fmt: skip
    """One line naming ``source``, the record kind, the offending keys and ``fix``, if any."""
    if not isinstance(data, Mapping):
        raise RecordError(f"{source}: {kind} should be a JSON object, got {type(data).__name__}")
    unknown, missing = sorted(set(data) - known), sorted(required - set(data))
    if unknown or missing:
        parts = ([f"unknown keys {unknown}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])
        raise RecordError(
            f"{source}: {kind} has {' and '.join(parts)}; it was written by another vpipe version "
            f"or edited by hand: {fix}"
        )


@dataclass(frozen=True)
class Record:
    """Base of the JSON-shaped records: key checks, ``to_dict``/``from_dict``, ``to_file``/``from_file``.

    ``_omit_none`` lists optional keys left out of the stored form while unset, for
    files whose older versions never had them (so their bytes stay the same).
    """

    _omit_none: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def _keys(cls) -> tuple[set[str], set[str]]:
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        return known, required

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any], *, source: str = "record") -> R:
        known, required = cls._keys()
        check_keys(cls.__name__, data, known, required, source)
        return cls(**{key: cls._load_field(key, value, source) for key, value in data.items()})

    @classmethod
    def _load_field(cls, key: str, value: Any, source: str) -> Any:
        """A stored value as the field holds it; subclasses convert nested records."""
        return value

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in self._omit_none:
                continue
            out[f.name] = value.to_dict() if isinstance(value, Record) else _plain(value)
        return out

    @classmethod
    def from_file(cls: type[R], path: Path) -> R:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise RecordError(f"{path}: not valid JSON ({error}); rerun the command that writes it") from None
        return cls.from_dict(data, source=str(path))

    def to_file(self, path: Path) -> None:
        """Written atomically, keys sorted, as vpipe has always written its JSON records."""
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2, sort_keys=True))


def _plain(value: Any) -> Any:
    """JSON's own types: tuples as lists, mappings as dicts, recursively."""
    if isinstance(value, Mapping):
        return {key: _plain(v) for key, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class DatasetConfig(Record):
    """``dataset.json``: which adapter, root and split a dataset workspace uses.

    Recorded by the first command that names them, so later commands need only the
    dataset name. ``synthetic`` holds the generator's options of an adapter that writes
    its own videos (:func:`vpipe.data.base.generator`; the key is absent for every other
    adapter, and keeps the name of the first such dataset, so existing workspaces read).
    """

    _omit_none: ClassVar[frozenset[str]] = frozenset({"synthetic"})

    adapter: str
    root: str
    split: int
    synthetic: Mapping[str, Any] | None = None

    @property
    def root_path(self) -> Path:
        return Path(self.root)
