"""Which adapter, root and split a dataset workspace uses.

Recorded in ``dataset.json`` by the first command that names them, so later
commands (``vpipe plan --dataset ucf101``) need only the dataset name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vpipe.artifacts.records import DatasetConfig
from vpipe.data.base import DatasetAdapter
from vpipe.data.registry import get_dataset
from vpipe.errors import ConfigError
from vpipe.pipeline.workspace import DatasetWorkspace

SYNTHETIC = "synthetic"


def configure_dataset(
    workspace: DatasetWorkspace,
    *,
    adapter: str | None = None,
    root: Path | None = None,
    split: int | None = None,
    synthetic_options: dict[str, Any] | None = None,
) -> DatasetConfig:
    """Merge the given options over the recorded ones, validate, record and return them."""
    recorded = workspace.read_config() if workspace.config_path.exists() else None
    name = adapter or (recorded.adapter if recorded else None) or workspace.dataset
    dataset = get_dataset(name)
    if root is not None:
        root_path = Path(root).expanduser().resolve()
    elif recorded is not None and recorded.root:
        root_path = recorded.root_path
    elif name == SYNTHETIC:
        root_path = workspace.dir / "source"
    else:
        raise ConfigError(
            f"dataset {workspace.dataset!r} needs --root: the directory holding the {name} videos and split files"
        )
    if name != SYNTHETIC and not root_path.exists():
        raise ConfigError(f"--root {root_path} does not exist")
    chosen_split = split if split is not None else (recorded.split if recorded else 1)
    if chosen_split not in dataset.split_numbers:
        raise ConfigError(
            f"{name} has splits {', '.join(map(str, dataset.split_numbers))}; --split {chosen_split} is not one of them"
        )
    synthetic = None
    if name == SYNTHETIC:
        synthetic = dict((recorded.synthetic if recorded else None) or {})
        synthetic.update({k: v for k, v in (synthetic_options or {}).items() if v is not None})
    config = DatasetConfig(adapter=name, root=str(root_path), split=int(chosen_split), synthetic=synthetic)
    if config != recorded:
        workspace.write_config(config)
    return config


def list_videos(config: DatasetConfig) -> tuple[DatasetAdapter, list]:
    """Generate the synthetic tree if needed, then list the dataset's videos."""
    dataset = get_dataset(config.adapter)
    if config.adapter == SYNTHETIC:
        dataset.generate(config.root_path, **(config.synthetic or {}))
    return dataset, dataset.prepare(config.root_path, split=config.split)
