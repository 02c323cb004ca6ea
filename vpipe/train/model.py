"""From a :class:`TrainConfig` to the head it trains: its inputs, its files, the module.

A one-stream head given several feature sets is fused here, so that heads never see
fusion: late fusion builds one head per feature set, each reading its own inputs under
a role prefix (:class:`vpipe.models.heads.fusion.LateFusion`); early fusion hands the
head all sets at once, and the data layer concatenates them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from vpipe.models.heads.fusion import LateFusion, prefixed_files, stream_prefix
from vpipe.models.heads.registry import Head, HeadInput
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.store import INDEX_FILE
from vpipe.train.config import TrainConfig


def run_inputs(config: TrainConfig) -> list[HeadInput]:
    """Every cached input the run reads, with the roles its model expects."""
    cls, options = config.head_cls, config.head_options
    if config.late_fusion:
        return [
            replace(spec, role=stream_prefix(i) + spec.role)
            for i, name in enumerate(config.features)
            for spec in cls.input_spec((name,), options)
        ]
    return cls.input_spec(config.features, options)


def fitted_codebook(ws: DatasetWorkspace) -> Callable[[str, int], Path | None]:
    """``(features, K) ->`` the workspace's codebook of ``features`` when it was fitted on
    them as they are now, else None.

    A codebook records the index of the features it was fitted on; after a re-extraction
    (new options, a new backbone version) that index differs and the codebook describes
    other vectors, possibly of another size, so a head must not start from it.
    """

    def current(features: str, clusters: int) -> Path | None:
        path = ws.codebook_path(features, clusters)
        if not path.is_file() or not (ws.features_dir(features) / INDEX_FILE).is_file():
            return None
        from vpipe.encode import load_codebook

        recorded = load_codebook(path).provenance.get("features_index_sha256")
        with ws.open_features(features) as feature_set:
            return path if recorded == feature_set.index_sha256 else None

    return current


def run_files(ws: DatasetWorkspace, config: TrainConfig) -> dict[str, Path]:
    """Files outside the feature cache the run reads, as its head declares them."""
    cls, options, codebooks = config.head_cls, config.head_options, fitted_codebook(ws)
    if config.late_fusion:
        return prefixed_files([cls.external_files(options, (name,), codebooks) for name in config.features])
    return cls.external_files(options, config.features, codebooks)


def build_model(config: TrainConfig, shapes: dict[str, tuple[int, ...]], num_classes: int) -> Head:
    """The (untrained) model for inputs of ``shapes`` (role -> per-entry shape)."""
    cls, options = config.head_cls, config.head_options
    if not config.late_fusion:
        return cls(shapes, num_classes, **options)
    heads = []
    for i in range(len(config.features)):
        prefix = stream_prefix(i)
        own = {role[len(prefix) :]: shape for role, shape in shapes.items() if role.startswith(prefix)}
        heads.append(cls(own, num_classes, **options))
    return LateFusion(heads)
