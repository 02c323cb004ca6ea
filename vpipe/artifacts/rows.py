"""Row schemas of the two tables every stage reads: the manifest and a plan.

Each table is a list of frozen row records, stored as Parquet with one column per
field in field order. The tables stay DataFrames in memory (a plan has millions of
rows at Kinetics size, too many for one Python object per row); the row record is
their schema, and :func:`read_rows` checks a stored table against it when the table
is read, so a renamed or missing column fails there, naming the file, not as a
``KeyError`` in the stage that uses the column.

A field with a default may be absent from a stored table; reading fills it in. In
the manifest those are the columns the probe fills from decoding, and their defaults
are what the probe writes for a video it could not read: a table listing videos with
their labels and splits (a feature cache made elsewhere) is a manifest of unprobed
videos.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from vpipe.artifacts.records import check_keys

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


@dataclass(frozen=True, kw_only=True)
class ManifestRow:
    """One video of ``manifest.parquet``, as the probe stage writes it."""

    kind: ClassVar[str] = "manifest"

    video_id: str
    path: str = ""
    label: int
    label_name: str
    #: train, test, or unused (a video the split files leave out).
    split: str
    num_frames: int = 0
    fps: float = 0.0
    width: int = 0
    height: int = 0
    codec: str = ""
    #: ok or failed; ``error`` says why a video failed.
    status: str
    error: str = ""


@dataclass(frozen=True, kw_only=True)
class PlanRow:
    """One (video, clip, view) of ``plans/<name>.parquet``: frames, resize, crop box, flip."""

    kind: ClassVar[str] = "plan"

    video_id: str
    clip: int
    view: int
    frames: tuple[int, ...]
    resize_h: int
    resize_w: int
    crop_y: int
    crop_x: int
    crop_h: int
    crop_w: int
    flip: bool


def columns(row_type: type) -> list[str]:
    """The stored column order: the row's fields in order."""
    return [f.name for f in fields(row_type)]


def plan_schema() -> pa.Schema:
    """Arrow types of a plan's columns (int32 indices: plans are the largest table)."""
    import pyarrow as pa

    types = {"video_id": pa.string(), "frames": pa.list_(pa.int32()), "flip": pa.bool_()}
    return pa.schema([pa.field(name, types.get(name, pa.int32()), nullable=False) for name in columns(PlanRow)])


def read_rows(path: Path, row_type: type, *, fix: str) -> pd.DataFrame:
    """The table at ``path``, checked against ``row_type``: columns in field order,
    absent optional columns filled with their defaults.

    An unknown column or an absent required one is one :class:`RecordError` naming the
    file; ``fix`` says what writes the table again.
    """
    import pandas as pd
    import pyarrow.parquet as pq

    stored = [name for name in pq.read_schema(path).names if not name.startswith("__index_level_")]
    known = set(columns(row_type))
    required = {f.name for f in fields(row_type) if f.default is MISSING}
    check_keys(f"{row_type.kind} table", dict.fromkeys(stored), known, required, str(path), fix)
    table = pd.read_parquet(path)
    for f in fields(row_type):
        if f.name not in table.columns:
            table[f.name] = f.default
    return table[columns(row_type)]
