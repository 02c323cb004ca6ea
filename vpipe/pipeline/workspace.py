"""Where artifacts live.

One directory per dataset under the workspace root; every stage reads and writes
only through these paths, so moving a workspace (``--workspace`` or
``VPIPE_WORKSPACE``) moves everything and nothing else needs configuring.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vpipe.errors import ConfigError, StageError

WORKSPACE_ENV = "VPIPE_WORKSPACE"


def resolve_workspace(path: str | Path | None = None) -> Path:
    """The explicit path, else ``$VPIPE_WORKSPACE``, else ``./workspace``."""
    chosen = path or os.environ.get(WORKSPACE_ENV) or "workspace"
    return Path(chosen).expanduser().resolve()


@dataclass(frozen=True)
class DatasetWorkspace:
    """The artifact paths of one dataset inside a workspace."""

    root: Path
    dataset: str

    def __post_init__(self) -> None:
        if not self.dataset or "/" in self.dataset or self.dataset.startswith("."):
            raise ConfigError(f"invalid dataset name {self.dataset!r}: use a plain name like 'ucf101'")

    @property
    def dir(self) -> Path:
        return self.root / self.dataset

    @property
    def config_path(self) -> Path:
        return self.dir / "dataset.json"

    @property
    def manifest_path(self) -> Path:
        return self.dir / "manifest.parquet"

    @property
    def failures_path(self) -> Path:
        return self.dir / "failures.parquet"

    @property
    def state_dir(self) -> Path:
        """Per-stage journals: the record of which items are done, used to resume."""
        return self.dir / ".state"

    def plan_path(self, name: str) -> Path:
        return self.dir / "plans" / f"{name}.parquet"

    def flow_dir(self, plan: str) -> Path:
        return self.dir / "flow" / plan

    def features_dir(self, name: str) -> Path:
        return self.dir / "features" / name

    def read_config(self) -> dict[str, Any]:
        """The dataset options recorded by the last probe (adapter, root, split)."""
        if not self.config_path.exists():
            raise StageError(
                f"dataset {self.dataset!r} has not been probed in {self.root}: "
                f"run `vpipe probe --dataset {self.dataset} --root PATH` first"
            )
        return json.loads(self.config_path.read_text())

    def write_config(self, config: dict[str, Any]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.config_path, json.dumps(config, indent=2, sort_keys=True))


def atomic_write_text(path: Path, text: str) -> None:
    """Write through a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
