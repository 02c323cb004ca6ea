"""Test-set metrics as the papers report them (li3d-bilstm §4.2, eq. 1–3; Table 3).

Everything is computed from the confusion matrix in plain numpy, so the numbers do not
depend on a scikit-learn version and the tests can hold them against scikit-learn as an
independent reference.

Macro averages run over the classes that occur in the test labels or the predictions,
which is scikit-learn's default: a class absent from both has no precision or recall to
speak of and would only pull the average towards zero. Per-class rows and the confusion
matrix still cover every class, so plots keep one row per class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

#: Keys of :func:`classification_metrics` that vary between two scorings of one model.
TIMING_KEYS = ("test_ms_per_video",)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``C[i, j]`` = number of videos of class i predicted as j."""
    flat = np.asarray(y_true, dtype=np.int64) * num_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise ratio with 0 where the denominator is 0 (``zero_division=0``)."""
    out = np.zeros(numerator.shape, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator > 0)
    return out


def top_k_accuracy(y_true: np.ndarray, scores: np.ndarray, k: int = 5) -> float:
    """Fraction of videos whose class is among the ``k`` highest scores.

    A class counts as within the top k when fewer than k classes score strictly higher,
    so ties never cost a hit; with k ≥ the number of classes every video is a hit.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    true_scores = scores[np.arange(len(y_true)), y_true]
    higher = (scores > true_scores[:, None]).sum(axis=1)
    return float((higher < k).mean())


def classification_metrics(
    y_true: Sequence[int] | np.ndarray, scores: np.ndarray, class_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro precision/recall/F1, top-5, per-class rows and the confusion matrix.

    ``scores`` is (videos, classes); the prediction is its arg-max. ``class_names[i]``
    names label i.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    num_classes = len(class_names)
    if scores.ndim != 2 or scores.shape != (len(y_true), num_classes):
        raise ValueError(f"scores must be ({len(y_true)}, {num_classes}), got {scores.shape}")
    if len(y_true) == 0:
        raise ValueError("no videos to score")
    y_pred = scores.argmax(axis=1)
    matrix = confusion(y_true, y_pred, num_classes)
    hits = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = _ratio(hits, predicted)
    recall = _ratio(hits, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = (support + predicted) > 0
    return {
        "videos": int(len(y_true)),
        "accuracy": float(hits.sum() / len(y_true)),
        "macro_precision": float(precision[present].mean()),
        "macro_recall": float(recall[present].mean()),
        "macro_f1": float(f1[present].mean()),
        "top5": top_k_accuracy(y_true, scores, 5),
        "per_class": [
            {
                "label": i,
                "class": str(name),
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        ],
        "confusion": matrix.tolist(),
    }
