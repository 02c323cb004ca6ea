"""The memory budget of the encode stage.

Encode is the one stage whose intermediate data grows with the dataset *and* the codebook:
the k-means sample (samples × D), and the baseline's train matrix (videos × K·D for VLAD,
2·K·D for FV: 5 GB of float32 for UCF101's 9.5k train videos at K=128, D=512). Both are
checked against one budget before they are allocated, so a dataset that does not fit
stops at once with one message saying what needed how much and how to fix it, never
with the kernel's out-of-memory killer half-way. Everything else the stage holds is a
batch of videos.
"""

from __future__ import annotations

import re

from vpipe.errors import ConfigError

#: Default budget: leaves about 1 GB of a 4 GB goal for the interpreter, torch and h5py.
DEFAULT_MEMORY_BUDGET_TEXT = "3G"

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class MemoryBudgetError(ConfigError):
    """Data that would have to be held in memory is larger than the memory budget."""


def parse_bytes(text: str) -> int:
    """``"3G"``, ``"512M"``, ``"1.5G"`` or a plain byte count -> bytes (binary units)."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?\s*", text.upper())
    if match is None or float(match.group(1)) <= 0:
        raise ConfigError(f"--memory-budget expects a size like 3G, 512M or 1.5G, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


DEFAULT_MEMORY_BUDGET = parse_bytes(DEFAULT_MEMORY_BUDGET_TEXT)

#: ``baseline=`` value of the encode stage: run the linear baseline for the methods whose
#: train matrix fits the budget and leave the others out with a warning, so that a
#: dataset-scale ``vpipe run`` finishes its encodings instead of stopping (an explicit
#: ``vpipe encode`` keeps the up-front refusal).
WITHIN_BUDGET = "within-budget"


def format_bytes(size: float) -> str:
    """Bytes in the largest binary unit that keeps the number at least 1."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.3g} {unit}"
        size /= 1024
    return f"{size:.3g} TiB"


def check_budget(what: str, needed: int, budget: int, fix: str) -> None:
    """:class:`MemoryBudgetError` when ``needed`` bytes for ``what`` exceed ``budget``."""
    if needed > budget:
        raise MemoryBudgetError(
            f"{what} needs {format_bytes(needed)} in memory, more than the --memory-budget of "
            f"{format_bytes(budget)}: {fix}"
        )
