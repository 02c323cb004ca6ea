"""Heads trained on cached features, registered by name (see :mod:`.registry`).

Importing this package registers every built-in head; a head of one's own registers
itself with ``@register_head`` when its module is imported.
"""

from vpipe.models.heads import bilstm
from vpipe.models.heads import deepfusion  # noqa: F401
from vpipe.models.heads import stmanet  # noqa: F401
from vpipe.models.heads import vcmsdd  # noqa: F401
from vpipe.models.heads.bilstm import BiLSTMSoftAggHead, init_aggregation_from_features
from vpipe.models.heads.registry import (
    Head,
    HeadBatch,
    HeadInput,
    HeadOption,
    PrepareData,
    TrainingDefaults,
    create_head,
    describe_head,
    head_class,
    list_heads,
    register_head,
)

__all__ = [
    "BiLSTMSoftAggHead",
    "Head",
    "HeadBatch",
    "HeadInput",
    "HeadOption",
    "PrepareData",
    "TrainingDefaults",
    "bilstm",
    "create_head",
    "describe_head",
    "head_class",
    "init_aggregation_from_features",
    "list_heads",
    "register_head",
]
