"""Test metrics against scikit-learn, the independent reference."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    top_k_accuracy_score,
)

from vpipe.train.metrics import classification_metrics, top_k_accuracy


def _data(seed: int, n: int = 300, classes: int = 9, skill: float = 1.5):
    """Scores that are right more often than chance, so every metric is away from 0 and 1."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, size=n)
    scores = rng.normal(size=(n, classes))
    scores[np.arange(n), y] += skill
    return y, scores


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_equal_scikit_learn(seed):
    y, scores = _data(seed)
    names = [f"class{i}" for i in range(scores.shape[1])]
    m = classification_metrics(y, scores, names)
    predicted = scores.argmax(1)
    precision, recall, f1, _ = precision_recall_fscore_support(y, predicted, average="macro", zero_division=0)
    assert m["videos"] == len(y)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, predicted), abs=1e-12)
    assert m["macro_precision"] == pytest.approx(precision, abs=1e-12)
    assert m["macro_recall"] == pytest.approx(recall, abs=1e-12)
    assert m["macro_f1"] == pytest.approx(f1, abs=1e-12)
    assert m["top5"] == pytest.approx(top_k_accuracy_score(y, scores, k=5, labels=range(len(names))), abs=1e-12)
    np.testing.assert_array_equal(m["confusion"], confusion_matrix(y, predicted, labels=range(len(names))))
    p, r, f, support = precision_recall_fscore_support(
        y, predicted, labels=range(len(names)), average=None, zero_division=0
    )
    for row, expected in zip(m["per_class"], zip(names, p, r, f, support)):
        assert (row["class"], row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(expected)


def test_classes_absent_from_labels_and_predictions_leave_the_macro_average():
    """Label 3 never occurs and label 2 is never predicted: scikit-learn averages over
    labels that occur in either, and so do we; the per-class rows still cover all four."""
    y = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 0, 1])
    scores = np.eye(4)[predicted] + 0.01
    m = classification_metrics(y, scores, ["a", "b", "c", "d"])
    precision, recall, _, _ = precision_recall_fscore_support(y, predicted, average="macro", zero_division=0)
    assert m["macro_precision"] == pytest.approx(precision)
    assert m["macro_recall"] == pytest.approx(recall)
    assert [row["support"] for row in m["per_class"]] == [2, 2, 2, 0]
    assert m["per_class"][3] == {"label": 3, "class": "d", "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert np.asarray(m["confusion"]).shape == (4, 4)


def test_top5_of_five_or_fewer_classes_is_one_and_ties_do_not_cost_a_hit():
    y, scores = _data(3, classes=4)
    assert classification_metrics(y, scores, list("abcd"))["top5"] == 1.0
    flat = np.zeros((3, 8))
    assert top_k_accuracy(np.array([0, 5, 7]), flat, 1) == 1.0


def test_rejects_scores_of_the_wrong_shape():
    with pytest.raises(ValueError, match="scores must be"):
        classification_metrics([0, 1], np.zeros((2, 3)), ["a", "b"])
