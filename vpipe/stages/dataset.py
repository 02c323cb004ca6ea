"""Which adapter, root and split a dataset workspace uses.

Recorded in ``dataset.json`` by the first command that names them, so later
commands (``vpipe plan --dataset ucf101``) need only the dataset name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vpipe.artifacts.records import DatasetConfig
from vpipe.data.base import GENERATED_ROOT, DatasetAdapter, generator
from vpipe.data.registry import get_dataset
from vpipe.errors import ConfigError
from vpipe.pipeline.workspace import DatasetWorkspace


def configure_dataset(
    workspace: DatasetWorkspace,
    *,
    adapter: str | None = None,
    root: Path | None = None,
    split: int | None = None,
    generator_options: dict[str, Any] | None = None,
) -> DatasetConfig:
    """Merge the given options over the recorded ones, validate, record and return them.

    ``generator_options`` are for an adapter that writes its own videos
    (:func:`vpipe.data.base.generator`); options given as None keep the recorded ones.
    """
    recorded = workspace.read_config() if workspace.config_path.exists() else None
    name = adapter or (recorded.adapter if recorded else None) or workspace.dataset
    dataset = get_dataset(name)
    generated = generator(dataset) is not None
    if root is not None:
        root_path = Path(root).expanduser().resolve()
    elif recorded is not None and recorded.root:
        root_path = recorded.root_path
    elif generated:
        root_path = workspace.dir / GENERATED_ROOT
    else:
        raise ConfigError(
            f"dataset {workspace.dataset!r} needs --root: the directory holding the {name} videos and split files"
        )
    if not generated and not root_path.exists():
        raise ConfigError(f"--root {root_path} does not exist")
    chosen_split = split if split is not None else (recorded.split if recorded else 1)
    if chosen_split not in dataset.split_numbers:
        raise ConfigError(
            f"{name} has splits {', '.join(map(str, dataset.split_numbers))}; --split {chosen_split} is not one of them"
        )
    options = None
    if generated:
        options = dict((recorded.synthetic if recorded else None) or {})
        options.update({k: v for k, v in (generator_options or {}).items() if v is not None})
    config = DatasetConfig(adapter=name, root=str(root_path), split=int(chosen_split), synthetic=options)
    if config != recorded:
        workspace.write_config(config)
    return config


def list_videos(config: DatasetConfig) -> tuple[DatasetAdapter, list]:
    """Let an adapter that writes its own videos write them (when not there yet), then list them."""
    dataset = get_dataset(config.adapter)
    if (generate := generator(dataset)) is not None:
        generate(config.root_path, **(config.synthetic or {}))
    return dataset, dataset.prepare(config.root_path, split=config.split)
