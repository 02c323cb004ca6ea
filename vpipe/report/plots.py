"""The figures of a run, drawn as the papers draw them.

* Training curves: loss and accuracy per epoch, train and validation (li3d-bilstm
  Figures 11–12, soft-correlation Figures 4–5), with the checkpointed epoch marked.
* Confusion matrix of the test split, rows normalised so that each row reads as the
  recall of its class. Above :data:`NAMED_CLASSES` classes the colour scale is a square
  root: a confusion of one video in a class of forty is 2.5 % of its row, invisible on
  a linear scale next to a full diagonal, and those scattered cells are what a reader
  of a 101-class matrix looks for. Above :data:`CONFUSION_NAMED_CLASSES` classes the
  rows and columns are ordered by :func:`vpipe.report.confusion_map.cluster_order`, so
  mutually confused classes form blocks on the diagonal; ``report.html`` shows that
  order as a zoomable SVG with names.
* t-SNE of the test videos before aggregation (the mean of a video's raw steps) and
  after it (the head's video embedding), coloured by class, side by side
  (soft-correlation Figures 2–3): tighter, better separated clusters on the right are
  what the aggregation is for.

Figures are written with matplotlib's Agg backend through the object API (no pyplot
state), so drawing works headless and from several threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap, Normalize, PowerNorm
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from vpipe.artifacts import atomic_path
from vpipe.report.confusion_map import cluster_order, row_shares

#: Up to this many classes, axes and legends name every class.
NAMED_CLASSES = 30
#: Up to this many classes the confusion matrix's axes still name every class, in a font
#: shrunk to fit its rows (8 pt at 101 classes); above it the report's per-class and
#: top-confusion tables name them.
CONFUSION_NAMED_CLASSES = 120
#: t-SNE input is first reduced to this many principal components, as is customary.
PCA_COMPONENTS = 50


def _save(figure: Figure, path: Path) -> Path:
    """Written atomically; the temporary name keeps the suffix, from which matplotlib picks the format."""
    FigureCanvasAgg(figure)
    with atomic_path(path, keep_suffix=True) as tmp:
        figure.savefig(tmp, dpi=120, bbox_inches="tight")
    return path


def plot_history(history: pd.DataFrame, best_epoch: int, path: Path, title: str) -> Path:
    """Loss and accuracy curves of ``history.csv``; the dashed line is the kept epoch."""
    figure = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = figure.subplots(1, 2)
    for ax, metric, label in ((loss_ax, "loss", "cross-entropy loss"), (acc_ax, "acc", "accuracy")):
        ax.plot(history["epoch"], history[f"train_{metric}"], label="train", color="tab:blue")
        ax.plot(history["epoch"], history[f"val_{metric}"], label="validation", color="tab:orange")
        ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best_epoch})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    acc_ax.set_ylim(0.0, 1.02)
    acc_ax.legend(loc="lower right")
    figure.suptitle(title)
    return _save(figure, path)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix; counts are printed in the cells of small ones."""
    matrix = np.asarray(matrix)
    n = len(class_names)
    clustered = n > CONFUSION_NAMED_CLASSES
    if clustered:
        order = cluster_order(matrix)
        matrix = matrix[np.ix_(order, order)]
    normalised = row_shares(matrix)
    size = min(4 + 0.35 * n, 24)
    figure = Figure(figsize=(size + 1.5, size), layout="constrained")
    ax = figure.subplots()
    scale = PowerNorm(0.5, vmin=0.0, vmax=1.0) if n > NAMED_CLASSES else Normalize(0.0, 1.0)
    image = ax.imshow(normalised, cmap="Blues", norm=scale, interpolation="nearest")
    figure.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    if NAMED_CLASSES < n <= CONFUSION_NAMED_CLASSES:
        fontsize = min(8.0, 0.6 * 72 * size / n)
        ax.set_xticks(range(n), class_names, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(n), class_names, fontsize=fontsize)
    if n <= NAMED_CLASSES:
        ax.set_xticks(range(n), class_names, rotation=90)
        ax.set_yticks(range(n), class_names)
        for i, j in zip(*np.nonzero(matrix)):
            colour = "white" if normalised[i, j] > 0.5 else "black"
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8, color=colour)
    how = " (clustered by confusion; names in report.html)" if clustered else ""
    ax.set_xlabel(f"predicted class{how}")
    ax.set_ylabel(f"true class{how}")
    ax.set_title(title)
    return _save(figure, path)


def tsne_2d(x: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE of the rows of ``x`` after PCA to :data:`PCA_COMPONENTS` dimensions.

    The perplexity is capped at a third of the sample count, so that small test splits
    still embed (scikit-learn requires perplexity < samples).

    It runs on one OpenMP thread: torch and scikit-learn each bring their own OpenMP
    runtime, and right after a forward pass their busy-waiting threads fight over the
    cores; measured on 2 busy cores, 12 points took 28 s that way and 0.05 s on one
    thread, and 500 points take about a second and a half on one thread.
    """
    x = np.asarray(x, dtype=np.float32)
    with threadpool_limits(1, user_api="openmp"):
        components = min(PCA_COMPONENTS, x.shape[0], x.shape[1])
        if components < x.shape[1]:
            x = PCA(components, random_state=seed).fit_transform(x)
        perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
        tsne = TSNE(2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
        return tsne.fit_transform(x)


def _class_colours(n: int) -> ListedColormap:
    """Qualitative colours up to 20 classes, a sampled spectrum beyond."""
    base = "tab10" if n <= 10 else "tab20" if n <= 20 else "nipy_spectral"
    cmap = colormaps[base]
    return ListedColormap(cmap(np.linspace(0, 1, n)) if base == "nipy_spectral" else cmap.colors[:n])


def plot_tsne(
    before: np.ndarray,
    after: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    path: Path,
    title: str,
    *,
    seed: int = 0,
) -> Path:
    """t-SNE of the same videos before (left) and after (right) aggregation, by class."""
    colours = _class_colours(len(class_names))
    figure = Figure(figsize=(12, 5.5), layout="constrained")
    axes = figure.subplots(1, 2)
    panels = (("before aggregation: mean of the cached steps", before), ("after aggregation: head embedding", after))
    for ax, (name, x) in zip(axes, panels):
        points = tsne_2d(x, seed)
        for label in np.unique(labels):
            chosen = labels == label
            ax.scatter(points[chosen, 0], points[chosen, 1], s=10, color=colours(int(label)), label=class_names[label])
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    if len(class_names) <= NAMED_CLASSES:
        axes[1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, markerscale=1.5, frameon=False)
    figure.suptitle(title)
    return _save(figure, path)
