"""Linear-classifier baseline on an encoding: the "traditional encoding" rows of a comparison.

Standardisation then a linear SVM (one-vs-rest, liblinear). ``C`` is either given or
chosen by stratified cross-validation on the train split alone; the test split is
only ever used for the final metrics. Top-5 ranks classes by ``decision_function``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_score, recall_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

#: Candidate C values for cross-validation on the train split.
C_GRID = (0.001, 0.01, 0.1, 1.0)
#: C used when some class has too few train videos to cross-validate.
DEFAULT_C = 0.1
CV_FOLDS = 3


def _model(c: float, seed: int) -> Pipeline:
    return make_pipeline(StandardScaler(), LinearSVC(C=c, max_iter=5000, random_state=seed))


def fit_linear(x: np.ndarray, y: np.ndarray, *, c: float | None = None, seed: int = 0) -> tuple[Pipeline, float]:
    """A fitted standardise + LinearSVC pipeline and the C it used."""
    if c is not None:
        return _model(c, seed).fit(x, y), c
    folds = min(CV_FOLDS, int(np.unique(y, return_counts=True)[1].min()))
    if folds < 2:
        return _model(DEFAULT_C, seed).fit(x, y), DEFAULT_C
    search = GridSearchCV(
        _model(DEFAULT_C, seed),
        {"linearsvc__C": list(C_GRID)},
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
    )
    search.fit(x, y)
    return search.best_estimator_, float(search.best_params_["linearsvc__C"])


def top_k_accuracy(scores: np.ndarray, classes: np.ndarray, y: np.ndarray, k: int) -> float:
    """Fraction of rows whose true label is among the ``k`` highest-scoring classes."""
    if scores.ndim == 1:
        scores = np.stack([-scores, scores], axis=1)
    top = classes[np.argsort(-scores, axis=1, kind="stable")[:, :k]]
    return float((top == y[:, None]).any(axis=1).mean())


def evaluate(model: Pipeline, x: np.ndarray, y: np.ndarray, labels: list[int]) -> dict[str, Any]:
    """Accuracy, macro precision/recall, top-5 and the confusion matrix on ``labels``."""
    predicted = model.predict(x)
    return {
        "accuracy": float(accuracy_score(y, predicted)),
        "macro_precision": float(precision_score(y, predicted, labels=labels, average="macro", zero_division=0)),
        "macro_recall": float(recall_score(y, predicted, labels=labels, average="macro", zero_division=0)),
        "top5": top_k_accuracy(model.decision_function(x), model.classes_, y, 5),
        "confusion": confusion_matrix(y, predicted, labels=labels).tolist(),
    }


def run_baseline(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    c: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit on train, report test metrics (confusion rows/columns: sorted labels of both splits).

    Encodings go in as float64: Fisher-vector columns of nearly empty cells have standard
    deviations near 1e-40, which float32 flushes to zero and standardisation turns into NaN.
    """
    x_train, x_test = np.asarray(x_train, dtype=np.float64), np.asarray(x_test, dtype=np.float64)
    model, chosen = fit_linear(x_train, y_train, c=c, seed=seed)
    labels = sorted(set(y_train.tolist()) | set(y_test.tolist()))
    return {
        "C": chosen,
        "C_chosen_by": "given" if c is not None else "train cross-validation",
        "train_videos": int(len(y_train)),
        "test_videos": int(len(y_test)),
        "labels": labels,
        **evaluate(model, x_test, y_test, labels),
    }
