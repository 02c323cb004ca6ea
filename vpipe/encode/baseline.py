"""Linear-classifier baseline on an encoding: the "traditional encoding" rows of a comparison.

Protocol: standardise (train statistics) then a one-vs-rest linear SVM with the squared
hinge loss and an L2 penalty, LinearSVC's objective; ``C`` is given or chosen on the
train split alone, and the test split is only ever used for the final metrics. Top-5
ranks classes by the decision scores.

Why not liblinear: at UCF101 scale (9.5k train videos × 65k–131k dimensions × 101
classes) its dual coordinate descent needs hundreds of passes per class and C, and
scikit-learn copies the matrix to float64 first. Here the objective, per class c,

    1/(2·C·n) (‖w_c‖² + b_c²) + 1/n Σ_i max(0, 1 − y_ic (w_c·z_i + b_c))²

is minimised in the primal for all classes at once by L-BFGS in torch: every function
evaluation is two float32 matrix products over the standardised train matrix, so the
cost is bounded and stated up front:

    evaluations ≤ (len(C_GRID) · folds + 1) · MAX_ITERATIONS · 1.25
    each evaluation ≈ 4 · n · dim · classes flops

which is LinearSVC's (liblinear penalises the intercept too, ``intercept_scaling=1``)
divided by C·n. C is selected along a warm-started path (ascending C, each fit starting
from the previous solution, which is close), with 3 stratified folds up to
:data:`FEW_FOLDS_ABOVE` train videos and one stratified 20 % hold-out above it; each
fold is re-standardised with its own fit-part statistics, as a scikit-learn pipeline
would. Standardisation statistics come from one streaming pass with float64
accumulators; nothing of the test split enters them or the choice of C.

Memory: the standardised train matrix (float32), during selection a re-standardised
copy of it split into fit and held-out parts, and the L-BFGS state are held and
checked against the budget; the test split is read, standardised and scored a block at
a time. Statistics are float64 because Fisher-vector columns of nearly empty cells have
standard deviations near 1e-40, which float32 would flush to zero.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from vpipe.encode.budget import DEFAULT_MEMORY_BUDGET, check_budget

if TYPE_CHECKING:
    import torch

    from vpipe.encode.encoding_io import EncodingReader

#: Candidate C values, ascending (the warm-started path runs in this order).
C_GRID = (0.001, 0.01, 0.1, 1.0)
#: C used when some class has too few train videos to select it.
DEFAULT_C = 0.1
CV_FOLDS = 3
#: Above this many train videos, C is selected on one stratified hold-out.
FEW_FOLDS_ABOVE = 3000
HOLDOUT_FRACTION = 0.2
#: L-BFGS iterations per fit (each about 1.25 evaluations with the strong-Wolfe search).
MAX_ITERATIONS = 100
HISTORY = 8
#: L-BFGS keeps 2·HISTORY vectors of the parameters plus a few working copies.
_STATE_COPIES = 2 * HISTORY + 6

#: ``blocks(rows)`` yields ``(positions into rows, X[rows[positions]])`` in row order.
Blocks = Callable[[np.ndarray], Iterator[tuple[np.ndarray, np.ndarray]]]


def array_blocks(x: np.ndarray, block_rows: int = 4096) -> Blocks:
    """:data:`Blocks` over an in-memory matrix."""

    def blocks(rows: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        rows = np.sort(rows)
        for start in range(0, len(rows), block_rows):
            yield np.arange(start, min(start + block_rows, len(rows))), x[rows[start : start + block_rows]]

    return blocks


def train_statistics(blocks: Blocks, rows: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation (ddof=0) in one pass, combining block moments
    (Chan et al.) so that large means do not cancel the spread. A zero deviation becomes 1,
    as in scikit-learn's StandardScaler, so a constant column standardises to 0."""
    count, mean, m2 = 0, np.zeros(dim), np.zeros(dim)
    for _, block in blocks(rows):
        block = block.astype(np.float64)
        n = len(block)
        block_mean = block.mean(axis=0)
        block_m2 = ((block - block_mean) ** 2).sum(axis=0)
        delta = block_mean - mean
        total = count + n
        mean = mean + delta * n / total
        m2 = m2 + block_m2 + delta**2 * count * n / total
        count = total
    std = np.sqrt(m2 / max(count, 1))
    return mean, np.where(std > 0, std, 1.0)


def standardise(block: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((block.astype(np.float64) - mean) / std).astype(np.float32)


def _objective_and_gradient(
    z: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor, c: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The objective of the module docstring and its gradient, by hand: two matrix products,
    no autograd graph (whose bookkeeping costs more than the products on small problems)."""
    import torch

    n = z.shape[0]
    slack = torch.clamp(1.0 - targets * (z @ weights + bias), min=0.0)
    loss = (slack * slack).sum() / n + ((weights * weights).sum() + (bias * bias).sum()) / (2.0 * c * n)
    residual = targets * slack * (-2.0 / n)
    return loss, z.T @ residual + weights / (c * n), residual.sum(dim=0) + bias / (c * n)


def fit_svm(
    z: torch.Tensor, y: np.ndarray, classes: np.ndarray, c: float, init: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One-vs-rest squared-hinge weights (dim, classes), bias and function evaluations used."""
    import torch

    targets = torch.from_numpy(np.where(y[:, None] == classes[None, :], 1.0, -1.0).astype(np.float32))
    if init is None:
        weights, bias = torch.zeros(z.shape[1], len(classes)), torch.zeros(len(classes))
    else:
        weights, bias = (t.clone() for t in init)
    optimiser = torch.optim.LBFGS(
        [weights, bias], lr=1.0, max_iter=MAX_ITERATIONS, history_size=HISTORY, line_search_fn="strong_wolfe",
        tolerance_grad=1e-6, tolerance_change=1e-10,
    )  # fmt: skip
    evaluations = 0

    def closure() -> torch.Tensor:
        nonlocal evaluations
        evaluations += 1
        loss, weights.grad, bias.grad = _objective_and_gradient(z, targets, weights, bias, c)
        return loss

    with torch.no_grad():
        optimiser.step(closure)
    return weights, bias, evaluations


def selection_splits(y: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train-only (fit, held-out) index pairs: 3 stratified folds, or one hold-out at scale."""
    from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit  # here: keeps `vpipe status` light

    smallest = int(np.unique(y, return_counts=True)[1].min())
    if len(y) > FEW_FOLDS_ABOVE and smallest >= 2:
        holdout = StratifiedShuffleSplit(1, test_size=HOLDOUT_FRACTION, random_state=seed)
        return list(holdout.split(np.zeros(len(y)), y))
    folds = min(CV_FOLDS, smallest)
    if folds < 2:
        return []
    return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def select_c(z: torch.Tensor, y: np.ndarray, classes: np.ndarray, seed: int) -> tuple[float, dict[str, Any]]:
    """The C of :data:`C_GRID` with the best mean held-out accuracy (ties: the smaller C)."""
    splits = selection_splits(y, seed)
    if not splits:
        return DEFAULT_C, {"folds": 0, "evaluations": 0, "accuracy_by_C": {}}
    accuracy = np.zeros(len(C_GRID))
    evaluations = 0
    for fit_rows, held_rows in splits:
        z_fit, z_held = _restandardised(z, fit_rows, held_rows)
        solution = None
        for i, c in enumerate(C_GRID):
            weights, bias, used = fit_svm(z_fit, y[fit_rows], classes, c, init=solution)
            solution, evaluations = (weights, bias), evaluations + used
            predicted = classes[(z_held @ weights + bias).argmax(dim=1).numpy()]
            accuracy[i] += float((predicted == y[held_rows]).mean()) / len(splits)
        del z_fit, z_held
    best = int(np.flatnonzero(accuracy >= accuracy.max() - 1e-12)[0])
    return C_GRID[best], {
        "folds": len(splits),
        "evaluations": evaluations,
        "accuracy_by_C": {str(c): round(float(a), 6) for c, a in zip(C_GRID, accuracy)},
    }


def _restandardised(z: torch.Tensor, fit_rows: np.ndarray, held_rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of the fit and held-out rows, both standardised with the fit rows' statistics."""
    import torch

    z_fit, z_held = z[torch.from_numpy(fit_rows)], z[torch.from_numpy(held_rows)]
    mean, std = train_statistics(array_blocks(z_fit.numpy()), np.arange(len(fit_rows)), z.shape[1])
    for part in (z_fit, z_held):
        part.sub_(torch.from_numpy(mean.astype(np.float32))).div_(torch.from_numpy(std.astype(np.float32)))
    return z_fit, z_held


def top_k_accuracy(scores: np.ndarray, classes: np.ndarray, y: np.ndarray, k: int) -> float:
    """Fraction of rows whose true label is among the ``k`` highest-scoring classes."""
    if scores.ndim == 1:
        scores = np.stack([-scores, scores], axis=1)
    top = classes[np.argsort(-scores, axis=1, kind="stable")[:, :k]]
    return float((top == y[:, None]).any(axis=1).mean())


def required_bytes(n_train: int, dim: int, classes: int) -> int:
    """What the baseline holds: the standardised train matrix, its per-fold copy and the L-BFGS state."""
    return 2 * 4 * n_train * dim + 4 * (dim + 1) * classes * _STATE_COPIES


def fit_and_evaluate(
    blocks: Blocks,
    dim: int,
    y: np.ndarray,
    split: np.ndarray,
    *,
    c: float | None = None,
    seed: int = 0,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    name: str = "encodings",
) -> dict[str, Any]:
    """Fit on the ``train`` rows, report metrics on the ``test`` rows (confusion rows/columns:
    sorted labels of both splits)."""
    import torch

    from sklearn.metrics import accuracy_score, confusion_matrix, precision_score, recall_score  # as above

    train_rows, test_rows = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    y_train, y_test = y[train_rows], y[test_rows]
    classes = np.unique(y_train)
    check_budget(
        f"the linear baseline on {name} ({len(train_rows)} train videos × {dim})",
        required_bytes(len(train_rows), dim, len(classes)),
        memory_budget,
        "raise --memory-budget, lower --clusters or --pca, or leave this method out with --methods",
    )
    mean, std = train_statistics(blocks, train_rows, dim)
    z = np.empty((len(train_rows), dim), dtype=np.float32)
    for positions, block in blocks(train_rows):
        z[positions] = standardise(block, mean, std)
    z_t = torch.from_numpy(z)
    if c is None:
        chosen, selection = select_c(z_t, y_train, classes, seed)
    else:
        chosen, selection = c, {"folds": 0, "evaluations": 0, "accuracy_by_C": {}}
    weights, bias, used = fit_svm(z_t, y_train, classes, chosen)
    del z_t, z
    scores = np.empty((len(test_rows), len(classes)), dtype=np.float32)
    for positions, block in blocks(test_rows):
        scores[positions] = (torch.from_numpy(standardise(block, mean, std)) @ weights + bias).numpy()
    predicted = classes[scores.argmax(axis=1)]
    labels = sorted(set(y_train.tolist()) | set(y_test.tolist()))
    return {
        "C": chosen,
        "C_chosen_by": "given" if c is not None else "train cross-validation",
        "selection": selection,
        "evaluations": selection["evaluations"] + used,
        "train_videos": len(train_rows),
        "test_videos": len(test_rows),
        "labels": labels,
        "accuracy": float(accuracy_score(y_test, predicted)),
        "macro_precision": float(precision_score(y_test, predicted, labels=labels, average="macro", zero_division=0)),
        "macro_recall": float(recall_score(y_test, predicted, labels=labels, average="macro", zero_division=0)),
        "top5": top_k_accuracy(scores, classes, y_test, 5),
        "confusion": confusion_matrix(y_test, predicted, labels=labels).tolist(),
    }


def run_baseline(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    c: float | None = None,
    seed: int = 0,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
) -> dict[str, Any]:
    """The baseline on in-memory matrices (notebooks, tests)."""
    x = np.concatenate([np.asarray(x_train), np.asarray(x_test)])
    split = np.array(["train"] * len(x_train) + ["test"] * len(x_test))
    y = np.concatenate([np.asarray(y_train), np.asarray(y_test)])
    return fit_and_evaluate(array_blocks(x), x.shape[1], y, split, c=c, seed=seed, memory_budget=memory_budget)


def run_baseline_file(
    reader: EncodingReader, *, c: float | None = None, seed: int = 0, memory_budget: int = DEFAULT_MEMORY_BUDGET
) -> dict[str, Any]:
    """The baseline on an encodings file, read a block at a time."""
    return fit_and_evaluate(
        reader.blocks, reader.shape[1], reader.label, reader.split, c=c, seed=seed, memory_budget=memory_budget,
        name=reader.path.name,
    )  # fmt: skip
