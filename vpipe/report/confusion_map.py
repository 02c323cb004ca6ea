"""A confusion matrix of hundreds of classes that a reader can still read: clustered, vector, named on hover.

At 400 classes (Kinetics-400) a raster of the matrix gives each class a few pixels and no
room for a name, and in label order the confusions scatter over the whole square. So above
:data:`~vpipe.report.plots.CONFUSION_NAMED_CLASSES` classes the report draws it differently:

* Classes are ordered so that classes confused with each other sit next to each other
  (:func:`cluster_order`): average-linkage clustering of the symmetrised, row-normalised
  confusions, leaves in optimal order. Groups of mutually confused classes then show as
  blocks along the diagonal instead of dots spread over 160,000 cells.
* The page embeds the matrix as inline SVG (:func:`confusion_svg`): vector, so browser zoom
  and print keep every cell sharp at any scale; only non-empty cells are drawn; each cell
  carries its names and counts as a tooltip (``<title>``, no script), and every row and
  column is named in small type that becomes legible when zoomed. The colour scale is the
  square root of the row share, as in the PNG.

The per-class and top-confusion tables of :mod:`vpipe.report.classes` name everything in
text beside it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import PowerNorm, to_hex
from scipy.cluster.hierarchy import leaves_list, linkage, optimal_leaf_ordering
from scipy.spatial.distance import squareform

#: SVG units per cell; names are set in 70 % of it.
_CELL = 10
#: A grid line every this many classes, to count rows and columns by.
_GRID_EVERY = 10


def row_shares(matrix: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (the share of the true class); empty rows stay zero."""
    matrix = np.asarray(matrix, dtype=float)
    rows = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)


def cluster_order(matrix: np.ndarray) -> np.ndarray:
    """A permutation of the classes that puts mutually confused classes next to each other.

    Distance between two classes is 1 minus the mean of the two ways they are confused
    (row shares, so a class's size does not weigh), clustered by average linkage with the
    leaves in optimal order (each neighbour pair as similar as the tree allows). Classes
    nobody confuses keep their label order among themselves, as ties in the tree do.
    """
    shares = row_shares(matrix)
    n = len(shares)
    if n < 3:
        return np.arange(n)
    similarity = (shares + shares.T) / 2
    np.fill_diagonal(similarity, 0.0)
    distance = squareform(1.0 - similarity / max(float(similarity.max()), 1e-12), checks=False)
    tree = linkage(distance, method="average")
    return leaves_list(optimal_leaf_ordering(tree, distance))


def confusion_svg(matrix: np.ndarray, class_names: Sequence[str], order: np.ndarray, title: str) -> str:
    """The row-normalised matrix in ``order`` as one ``<svg>`` element (see the module docstring)."""
    matrix = np.asarray(matrix, dtype=np.int64)[np.ix_(order, order)]
    names = [str(class_names[i]) for i in order]
    shares = row_shares(matrix)
    support = matrix.sum(axis=1)
    n = len(names)
    font = 0.7 * _CELL
    margin = int(font * 0.6 * max(len(name) for name in names)) + _CELL
    side = n * _CELL
    width, height = margin + side + _CELL, margin + side + _CELL
    colour = colormaps["Blues"]
    scale = PowerNorm(0.5, vmin=0.0, vmax=1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="confusion" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{html.escape(title)}" font-family="sans-serif" font-size="{font:g}">',
        f"<title>{html.escape(title)}</title>",
        f'<rect x="{margin}" y="{margin}" width="{side}" height="{side}" fill="#fff" stroke="#888"/>',
    ]
    for k in range(_GRID_EVERY, n, _GRID_EVERY):
        at = margin + k * _CELL
        parts.append(f'<path d="M{at} {margin}V{margin + side}M{margin} {at}H{margin + side}" stroke="#ddd"/>')
    for i, j in zip(*np.nonzero(matrix)):
        share = shares[i, j]
        fill = to_hex(colour(float(scale(share))))
        tip = f"{names[i]} → {names[j]}: {matrix[i, j]} of {support[i]} ({share:.3f})"
        parts.append(
            f'<rect x="{margin + j * _CELL}" y="{margin + i * _CELL}" width="{_CELL}" height="{_CELL}" '
            f'fill="{fill}"><title>{html.escape(tip)}</title></rect>'
        )
    for k, name in enumerate(names):
        middle = margin + k * _CELL + _CELL / 2
        label = html.escape(name)
        parts.append(f'<text x="{margin - 3}" y="{middle:g}" text-anchor="end" dominant-baseline="central">{label}</text>')
        parts.append(
            f'<text transform="translate({middle:g} {margin - 3}) rotate(-90)" dominant-baseline="central">{label}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
