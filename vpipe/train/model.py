"""From a :class:`TrainConfig` to the head it trains (its inputs and files: :mod:`vpipe.train.identity`).

A one-stream head given several feature sets is fused here, so that heads never see
fusion: late fusion builds one head per feature set, each reading its own inputs under
a role prefix (:class:`vpipe.models.heads.fusion.LateFusion`); early fusion hands the
head all sets at once, and the data layer concatenates them.
"""

from __future__ import annotations

from vpipe.models.heads.fusion import LateFusion, stream_prefix
from vpipe.models.heads.registry import Head
from vpipe.train.config import TrainConfig


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
