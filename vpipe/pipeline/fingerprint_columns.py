"""Fingerprints of many items at once, each equal to :func:`fingerprint` of its parts.

``vpipe status`` on a Kinetics-sized workspace asks for every video's fingerprint in
six stages; built one by one (a JSON text, a hash, a Python object per video) that
was most of two minutes. Here the canonical JSON of each part is built over whole
Arrow columns (a scalar part once), the parts are joined per row by Arrow's string
kernels, and the only per-item Python left is one SHA-256 of each row's text.

The texts are byte for byte what :func:`vpipe.pipeline.fingerprint.canonical_json`
writes for the same values (ints, bools, ASCII strings, lists of them), so a
fingerprint computed here equals the one computed item by item, and no workspace
turns stale, or current, by the change; ``tests/test_fingerprint_columns.py`` checks
the two against each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vpipe.pipeline.fingerprint import canonical_json, file_fingerprint


def _plain(values: pa.StringArray) -> bool:
    """Whether every string is printable ASCII without ``"`` or ``\\``, which JSON writes as
    it is between quotes: one pass over the column's bytes."""
    offsets = np.frombuffer(values.buffers()[1], np.int32)[values.offset : values.offset + len(values) + 1]
    if not len(values) or offsets[-1] == offsets[0]:
        return True
    data = np.frombuffer(values.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    return bool(((data >= 0x20) & (data <= 0x7E) & (data != 0x22) & (data != 0x5C)).all())


def json_texts(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """:func:`canonical_json` of every value of an int, bool, string or list column."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.null_count:
        raise ValueError(f"a fingerprinted column of {values.type} holds {values.null_count} nulls")
    kind = values.type
    if pa.types.is_integer(kind):
        return pc.cast(values, pa.string())
    if pa.types.is_boolean(kind):
        return pc.if_else(values, "true", "false")
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = pc.cast(values, pa.string())
        if not _plain(values):
            # Escapes and non-ASCII: JSON's own rules, value by value (rare in ids and splits).
            return pa.array([canonical_json(v) for v in values.to_pylist()], pa.string())
        return pc.binary_join_element_wise('"', values, '"', "")
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        offsets = pc.subtract(values.offsets, values.offsets[0])
        inner = pa.ListArray.from_arrays(pc.cast(offsets, pa.int32()), json_texts(values.flatten()))
        return pc.binary_join_element_wise("[", pc.binary_join(inner, ","), "]", "")
    raise TypeError(f"no canonical JSON for a column of {kind}")


def json_lists(*texts: str | pa.Array) -> pa.Array:
    """Per row, the JSON array of the given JSON texts: a ``str`` is one text shared by every
    row, a column gives each row its own. ``json_lists('1', col)`` is ``[1,<col>]`` per row."""
    if not any(isinstance(t, pa.Array) for t in texts):
        raise ValueError("json_lists needs at least one column")
    joined = pc.binary_join_element_wise(*texts, ",") if len(texts) > 1 else texts[0]
    return pc.binary_join_element_wise("[", joined, "]", "")


def grouped_json_lists(texts: pa.Array, offsets: pa.Array) -> pa.Array:
    """The JSON array of each group of consecutive rows: group ``i`` is rows
    ``offsets[i]:offsets[i + 1]`` (a video's clips, sorted by video)."""
    groups = pa.ListArray.from_arrays(pc.cast(offsets, pa.int32()), texts)
    return pc.binary_join_element_wise("[", pc.binary_join(groups, ","), "]", "")


def fingerprints_of_json(texts: pa.Array) -> pa.Array:
    """:func:`vpipe.pipeline.fingerprint.fingerprint_of_json` of every text of a column."""
    sha256 = hashlib.sha256
    return pa.array([sha256(text).hexdigest()[:16] for text in pc.cast(texts, pa.binary()).to_pylist()], pa.string())


def row_fingerprints(*parts: str | pa.Array) -> pa.Array:
    """Per row, ``fingerprint(*parts)``, each part given as its canonical JSON text: a
    ``str`` for a part shared by every row, a column (see :func:`json_texts`) for one that
    varies. ``row_fingerprints(canonical_json("auto"), json_texts(sizes))`` equals
    ``[fingerprint("auto", s) for s in sizes]``."""
    return fingerprints_of_json(json_lists(*parts))


def file_fingerprints(paths: Sequence[str] | pa.Array) -> pa.Array:
    """:func:`vpipe.pipeline.fingerprint.file_fingerprint` of every path, as a string column
    (one ``stat`` per path, or a lookup within :func:`one_stat_per_file`)."""
    if isinstance(paths, (pa.Array, pa.ChunkedArray)):
        paths = paths.to_pylist()
    return pa.array([file_fingerprint(path) for path in paths], pa.string())


def source_fingerprints(decoder: str, paths: Sequence[str] | pa.Array) -> pa.Array:
    """Per video, ``fingerprint(decoder, file_fingerprint(path))``: what a video's frames
    depend on (the probe's item fingerprint, and an rgb feature's input)."""
    return row_fingerprints(canonical_json(decoder), json_texts(file_fingerprints(paths)))
