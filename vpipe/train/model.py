"""From a :class:`TrainConfig` to the head it trains: its inputs, its files, the module.

A one-stream head given several feature sets is fused here, so that heads never see
fusion: late fusion builds one head per feature set, each reading its own inputs under
a role prefix (:class:`vpipe.models.heads.fusion.LateFusion`); early fusion hands the
head all sets at once, and the data layer concatenates them.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from vpipe.models.heads.fusion import LateFusion, prefixed_files, stream_prefix
from vpipe.models.heads.registry import Head, HeadInput
from vpipe.pipeline.workspace import DatasetWorkspace
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


def run_files(ws: DatasetWorkspace, config: TrainConfig) -> dict[str, Path]:
    """Files outside the feature cache the run reads, as its head declares them."""
    cls, options = config.head_cls, config.head_options
    if config.late_fusion:
        return prefixed_files([cls.external_files(options, (name,), ws.codebook_path) for name in config.features])
    return cls.external_files(options, config.features, ws.codebook_path)


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
