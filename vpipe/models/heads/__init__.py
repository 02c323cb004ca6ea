"""Heads trained on cached clip features (see DESIGN.md, "Heads")."""

from vpipe.models.heads.bilstm import BiLSTMSoftAggHead, init_aggregation_from_features

__all__ = ["BiLSTMSoftAggHead", "init_aggregation_from_features"]
