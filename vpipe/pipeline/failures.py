"""``failures.parquet``: every item that could not be processed, with the reason.

One table per dataset, shared by all stages; each stage replaces its own rows,
so the file always describes the latest run of every stage.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vpipe.artifacts import atomic_path

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ["stage", "video_id", "path", "error", "time"]


def read_failures(path: Path) -> pd.DataFrame:
    import pandas as pd

    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    return pd.read_parquet(path)


def replace_stage_failures(path: Path, stage: str, failures: list[dict]) -> pd.DataFrame:
    """Drop ``stage``'s old rows, add the new ones, write atomically."""
    import pandas as pd

    table = read_failures(path)
    table = table[table["stage"] != stage]
    new = pd.DataFrame(failures, columns=COLUMNS)
    table = new if table.empty else pd.concat([table, new], ignore_index=True)
    table = table.astype({"stage": str, "video_id": str, "path": str, "error": str, "time": float})
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)
    return table
