"""The dataset adapters the product knows, by name.

``vpipe ... --dataset NAME`` resolves here. The synthetic dataset is registered
when its module can be imported, so that the recipes for real collections keep
working in an install that lacks the synthetic dataset's dependencies.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from vpipe.data.base import DatasetAdapter
from vpipe.data.csvlist import CsvList
from vpipe.data.folder import Folder
from vpipe.data.hmdb51 import HMDB51
from vpipe.data.kinetics import Kinetics
from vpipe.data.ucf101 import UCF101
from vpipe.errors import ConfigError


def _optional_adapters() -> list[DatasetAdapter]:
    """Adapters whose modules may be absent; a missing module only drops its adapter."""
    try:
        from vpipe.data.synthetic import SyntheticDataset
    except ModuleNotFoundError as err:
        if err.name != "vpipe.data.synthetic":
            raise
        return []
    return [SyntheticDataset()]


def _by_name(adapters: Iterable[DatasetAdapter]) -> dict[str, DatasetAdapter]:
    """Index adapters by name; two adapters with one name is a bug, not a user error."""
    registry: dict[str, DatasetAdapter] = {}
    for adapter in adapters:
        if adapter.name in registry:
            raise ValueError(f"two dataset adapters are named {adapter.name!r}")
        registry[adapter.name] = adapter
    return registry


#: Every registered adapter, by name.
DATASETS: dict[str, DatasetAdapter] = _by_name(
    [UCF101(), HMDB51(), Kinetics(), Folder(), CsvList(), *_optional_adapters()]
)


def get_dataset(name: str) -> DatasetAdapter:
    """The adapter called ``name``; an unknown name raises with the closest known names."""
    try:
        return DATASETS[name]
    except KeyError:
        close = difflib.get_close_matches(name.lower(), DATASETS, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ConfigError(f"unknown dataset {name!r}; {hint}known datasets: {', '.join(sorted(DATASETS))}") from None


def list_datasets() -> list[DatasetAdapter]:
    """All registered adapters, sorted by name (for ``vpipe datasets``)."""
    return [DATASETS[name] for name in sorted(DATASETS)]
