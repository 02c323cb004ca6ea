"""HOG, HOF and MBH (and a colour histogram) on a dense grid: motion descriptors that need no weights.

These are the descriptors of Wang et al.'s dense trajectories, computed on fixed
grid positions instead of along tracked points: per frame, every pixel votes its
magnitude into orientation bins of the image gradient (HOG, 8 bins), of the flow
(HOF, 8 bins plus a no-motion bin) and of the spatial gradients of each flow
component (MBHx, MBHy, 8 bins each), and its colour votes its chroma into hue bins
(colour, 8 bins plus a no-colour bin; below). Votes are averaged in nx = 2 x ny = 2 x
nt = 3 spatio-temporal cells, and each descriptor type is L1-normalised over its cells
and square-rooted (RootSIFT), as in the improved-trajectories recipe. MBH ignores a
constant flow, so camera translation does not reach it.

Colour (not in Wang et al., whose descriptors are grey-level): a pixel's opponent chroma
``((r - g) / sqrt 2, (r + g - 2b) / sqrt 6)`` (r, g, b in [0, 1]) is a 2-D vector whose
angle is the hue and whose length is the colourfulness; it votes like a gradient into 8
hue bins, and pixels of chroma up to ``NO_COLOUR`` vote that amount into a grey bin, as
still pixels do in HOF. Why: grey levels cannot tell apart actions that differ only in the
colour of what is seen when (a light turning from red to green, a red then a blue object:
the synthetic set's ``RedThenBlue`` / ``BlueThenRed`` pair, time-reversed partners, whose
colours have luma 87 and 70 and were at chance with grey descriptors). A histogram rather
than a per-cell mean chroma: a small saturated object moves a cell's mean little against
a tinted background, but its mass in its hue bin stands out against the grey bin, the way
HOF's no-motion bin lets a small moving object stand out. It costs one more histogram pass
(the descriptors take 1.32x the CPU of the grey-level four, still about 1 % of the flow
they read; BENCHMARKS.md) and 108 values per step.

Blocks are commensurable by construction: each type is normalised over its own cells, so
every block of a step has unit L2 norm after the square root whatever its number of
bins; it is the spread of a block across videos, not its size, that can make a head
favour it, which the head's input scaling decides (the declared histograms share one
scale; see :data:`HISTOGRAM_BLOCKS` and :func:`vpipe.models.heads.bilstm.input_scales`).

The input is a clip of the frames and their cached TV-L1 flow stacked as five
channels (r, g, b in [0, 1]; u, v in pixels). Two layers are cached:

- ``pool`` (tau, D): one descriptor per window of ``step`` frames, windows starting
  every ``stride`` frames, its cells tiling the whole frame; the per-step sequence the
  temporal heads read. With the defaults (``step`` = 3, ``stride`` = 1) a window's
  three temporal cells are three consecutive frame pairs (a frame and its flow to the
  next), so a clip of T frames gives T - 2 steps and the sequence keeps the order and
  the rhythm of the motion at the flow's own resolution: a temporal head sees every
  frame-pair transition, where 8-frame steps gave it two per 16-frame clip.
- ``local`` (tau' * P, D): the same descriptor for every patch of 2 x 2 cells of
  ``cell`` pixels on a grid of stride ``cell`` (P patches per window, in window, row,
  column order), over disjoint windows (stride ``step``): the bag of local descriptors
  that BoF / VLAD / Fisher encode, which overlapping windows would only repeat.

Camera motion (``camera``): ``median`` (the default, on every dataset) subtracts each
frame's median flow from the flow before HOF. The rule: the median of the flow field is
the motion of whatever covers most of the frame, which in action footage is the
background, so it is the camera's translation; on a still camera it is zero (up to the
flow cache's quantisation, under HOF's no-motion threshold) and changes nothing. It
fails only when the actor fills more than half the frame, where it removes part of the
actor's own motion; ``none`` keeps the raw flow. MBH needs no compensation: it is the
gradient of the flow, which a translation does not change. The option is part of the
extract fingerprint and of the feature set's provenance.

D = 12 cells x (8 + 9 + 8 + 8 + 9) bins = 504, laid out type by type (HOG, HOF, MBHx,
MBHy, colour), each type as (t-cell, y-cell, x-cell, bin).

Against the reference code (``Descriptors.h`` of Wang's dense-trajectory release): only
HOF has a no-motion threshold there too (``min_flow``, 0.4; MBH and HOG have none, as
here), but its still pixels vote 1.0 into the zero bin where they vote ``NO_MOTION`` here.
The vote in flow units stays a choice: the reference's 1.0 scored 73.9 % against 74.8 %
(BiLSTM, 5 seeds, a validation split of bench/heldout_motion.py's fit videos), inside
the spread of the seeds. Alternatives measured there and not adopted (bench/ablation.md,
"Version 4 candidates"): HOG counted only on moving pixels, divergence / curl / shear
histograms of the flow's derivatives, and equal total variance per block.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from vpipe.errors import ConfigError
from vpipe.models.backbones.registry import (
    BackboneSpec,
    check_input,
    finalize_spec,
    register_backbone,
)

ORIENTATIONS = 8
#: Flow slower than this (pixels per frame) votes for HOF's no-motion bin: a little
#: over two steps of the uint8 flow cache (40 / 255 px at bound 20), whose nearest
#: codes to a zero flow are +-0.08 px. It is also the dense-trajectory reference code's
#: ``min_flow`` (Wang et al.).
NO_MOTION = 0.4
NT, NY, NX = 3, 2, 2
#: Chroma (opponent-colour vector length, colour values in [0, 1]) at or below which a
#: pixel votes for the colour block's grey bin: above the tint of a grey surface under
#: coloured light (up to ~0.1 for channel gains 0.9-1.1) and camera noise, well below a
#: saturated colour (0.5-0.7).
NO_COLOUR = 0.15
DESCRIPTORS = (
    ("hog", ORIENTATIONS),
    ("hof", ORIENTATIONS + 1),
    ("mbhx", ORIENTATIONS),
    ("mbhy", ORIENTATIONS),
    ("colour", ORIENTATIONS + 1),
)
CELLS = NT * NY * NX
DIM = CELLS * sum(bins for _, bins in DESCRIPTORS)
#: Widths of the consecutive histogram blocks of both layers, in layout order: what the
#: backbone declares so that heads scale them as histograms (one shared scale) instead of
#: per bin.
HISTOGRAM_BLOCKS = tuple(CELLS * bins for _, bins in DESCRIPTORS)
#: Camera-motion handling for HOF: ``median`` subtracts each frame's median flow (a
#: translation-only stand-in for improved trajectories' homography), so a panning
#: background stops drowning the actors' motion; MBH needs none. See the module docstring.
CAMERA = ("none", "median")
CAMERA_DEFAULT = "median"
#: Frames per window (one per temporal cell) and frames between window starts.
STEP, STRIDE = NT, 1
#: ITU-R BT.601 luma, the grey level OpenCV (and so the dense-trajectory code) uses.
LUMA = (0.299, 0.587, 0.114)
#: Opponent-colour axes (r - g, and r + g against b), orthonormal and orthogonal to grey.
CHROMA = ((1 / math.sqrt(2), -1 / math.sqrt(2), 0.0), (1 / math.sqrt(6), 1 / math.sqrt(6), -2 / math.sqrt(6)))
#: Flow codes q in 0..255 map to q * 40 / 255 - 20 pixels (bound 20) through the spec's
#: mean/std, which apply to values scaled to [0, 1]: (q / 255 - 0.5) / 0.025.
FLOW_MEAN, FLOW_STD = 0.5, 0.025


def gradients(image: Tensor) -> tuple[Tensor, Tensor]:
    """Central differences ``[-1, 0, 1]`` along x and y of (..., H, W), borders replicated.

    The unscaled kernel is the dense-trajectory code's (OpenCV Sobel of size 1);
    replicating the border keeps a flat image at zero gradient up to its edges.
    """
    padded = torch.nn.functional.pad(image.reshape(-1, 1, *image.shape[-2:]), (1, 1, 1, 1), mode="replicate")
    dx = padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]
    dy = padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]
    return dx.reshape(image.shape), dy.reshape(image.shape)


def orientation_histograms(
    dx: Tensor, dy: Tensor, rows: Tensor, cols: Tensor, shape: tuple[int, int], no_motion: float | None = None
) -> Tensor:
    """Orientation histograms of (N, T, H, W) vectors summed over pixel blocks: (N, T, By, Bx, bins).

    Bin ``b`` is centred on ``b * 45`` degrees (image axes: x right, y down) and each
    vector splits its magnitude linearly between the two nearest centres. With
    ``no_motion``, vectors not longer than it vote ``no_motion`` (a magnitude in the
    same unit) into an extra last bin instead, which tells a still region from an
    empty histogram. Pixel row ``i`` belongs to block row ``rows[i]`` and column ``j``
    to block column ``cols[j]``; summing straight into blocks with one ``bincount``
    never builds the (bins x pixels) vote maps, which is most of the speed.
    """
    n, frames = dx.shape[:2]
    blocks_y, blocks_x = shape
    bins = ORIENTATIONS + (no_motion is not None)
    magnitude = torch.sqrt(dx * dx + dy * dy)
    position = torch.atan2(dy, dx).mul_(ORIENTATIONS / (2 * math.pi)).remainder_(ORIENTATIONS)
    lower = torch.floor(position)
    upper_mass = position.sub_(lower).mul_(magnitude)
    lower = lower.remainder_(ORIENTATIONS)
    if no_motion is not None:
        still = magnitude <= no_motion
        lower = lower.masked_fill_(still, ORIENTATIONS)
        magnitude = magnitude.masked_fill_(still, no_motion)
        upper_mass = upper_mass.masked_fill_(still, 0.0)
    block = (rows.view(-1, 1) * blocks_x + cols.view(1, -1)) * bins
    first = torch.arange(n * frames, device=dx.device).view(n, frames, 1, 1) * (blocks_y * blocks_x * bins)
    index = (lower.long() + block + first).flatten()
    size = n * frames * blocks_y * blocks_x * bins
    shape = (n, frames, blocks_y, blocks_x, bins)
    # Keyed by the lower bin: all the magnitude, and the share that belongs to the next bin.
    mass = torch.bincount(index, magnitude.flatten(), minlength=size).to(dx.dtype).view(shape)
    moved = torch.bincount(index, upper_mass.flatten(), minlength=size).to(dx.dtype).view(shape)
    circle = mass[..., :ORIENTATIONS] - moved[..., :ORIENTATIONS] + moved[..., :ORIENTATIONS].roll(1, -1)
    return torch.cat([circle, mass[..., ORIENTATIONS:]], -1)


def split_bounds(length: int, parts: int) -> list[int]:
    """Boundaries of ``parts`` near-equal consecutive segments of ``0..length``."""
    return [int(b) for b in np.linspace(0, length, parts + 1).round()]


def window_count(frames: int, step: int, stride: int) -> int:
    """Windows of ``step`` frames starting every ``stride`` frames that fit in ``frames``."""
    return 0 if frames < step else (frames - step) // stride + 1


def window_bounds(frames: int, step: int, stride: int) -> tuple[list[int], list[int]]:
    """Start and end frame of each temporal cell of each window, window-major (NT per window)."""
    inner = split_bounds(step, NT)
    starts, ends = [], []
    for w in range(window_count(frames, step, stride)):
        first = w * stride
        starts += [first + b for b in inner[:-1]]
        ends += [first + b for b in inner[1:]]
    return starts, ends


def window_means(x: Tensor, bounds: tuple[list[int], list[int]]) -> Tensor:
    """Means of (N, T, ...) over the frame ranges ``bounds`` along T: (N, len(bounds[0]), ...).

    One cumulative sum serves every window, so overlapping windows cost no more than
    disjoint ones.
    """
    starts, ends = (torch.tensor(b, device=x.device) for b in bounds)
    total = torch.cat([torch.zeros_like(x[:, :1]), x.double().cumsum(1)], 1)
    span = (ends - starts).to(total.dtype).view(1, -1, *([1] * (x.dim() - 2)))
    return ((total[:, ends] - total[:, starts]) / span).to(x.dtype)


def block_index(length: int, bounds: list[int], device: torch.device) -> tuple[Tensor, list[int]]:
    """Block of every pixel along an axis cut at every bound of every layout, and the cuts."""
    cuts = sorted(set(bounds) | {0, length})
    return torch.bucketize(torch.arange(length, device=device), torch.tensor(cuts[1:-1], device=device), right=True), cuts


def cell_means(blocks: Tensor, cuts_y: list[int], cuts_x: list[int], cells_y: list[int], cells_x: list[int]) -> Tensor:
    """(N, T, By, Bx, bins) block sums -> (N, T, Cy, Cx, bins) means over cells made of whole blocks."""
    def membership(cuts: list[int], cells: list[int]) -> Tensor:
        starts = torch.tensor(cuts[:-1], dtype=blocks.dtype, device=blocks.device)
        lower = torch.tensor(cells[:-1], dtype=blocks.dtype, device=blocks.device).view(-1, 1)
        upper = torch.tensor(cells[1:], dtype=blocks.dtype, device=blocks.device).view(-1, 1)
        inside = ((starts >= lower) & (starts < upper)).to(blocks.dtype)
        return inside / (upper - lower)

    return torch.einsum("yY,ntYXb,xX->ntyxb", membership(cuts_y, cells_y), blocks, membership(cuts_x, cells_x))


def root_normalise(x: Tensor) -> Tensor:
    """L1 over the last dimension, then the square root (RootSIFT's Hellinger mapping)."""
    return torch.sqrt(x / x.sum(-1, keepdim=True).clamp_min(1e-12))


class DenseDescriptors(nn.Module):
    """HOG / HOF / MBHx / MBHy of a (N, 5, T, H, W) clip of frames and flow; no parameters."""

    def __init__(self, *, step: int = STEP, stride: int = STRIDE, cell: int = 16, camera: str = CAMERA_DEFAULT):
        super().__init__()
        if camera not in CAMERA:
            raise ConfigError(f"hoghofmbh camera={camera!r}: use one of {', '.join(CAMERA)}")
        if step < NT:
            raise ConfigError(f"hoghofmbh step={step}: a step needs at least {NT} frames, one per temporal cell")
        if cell < 1:
            raise ConfigError(f"hoghofmbh cell={cell}: cells need at least one pixel")
        if stride < 1:
            raise ConfigError(f"hoghofmbh stride={stride}: windows must start at least one frame apart")
        self.step, self.stride, self.cell, self.camera = step, stride, cell, camera
        self.num_features = DIM
        self.spec = finalize_spec(
            BackboneSpec(
                name="hoghofmbh",
                stream="rgb",
                input_kind="clip",
                in_channels=5,
                clip_length=16,
                input_size=(112, 112),
                mean=(0.0, 0.0, 0.0, FLOW_MEAN, FLOW_MEAN),
                std=(1.0, 1.0, 1.0, FLOW_STD, FLOW_STD),
                layers=("pool", "local"),
                shape_fn=self.layer_shapes,
                checkpoint_layout="none",
                first_conv="none",
            ),
            self,
        )

    def layer_shapes(self, input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        _, frames, height, width = input_shape
        patches = (height // self.cell - 1) * (width // self.cell - 1)
        local = window_count(frames, self.step, self.step) * patches
        return {"pool": (window_count(frames, self.step, self.stride), DIM), "local": (local, DIM)}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_features(x)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        check_input(self, x)
        n, _, frames, height, width = x.shape
        if frames < self.step or min(height, width) < 2 * self.cell:
            raise ConfigError(
                f"hoghofmbh needs clips of at least step={self.step} frames and 2 x cell={self.cell} pixels a side, "
                f"got {frames} frames of {height}x{width}: plan longer or larger clips, or pass smaller -o step / -o cell"
            )
        pool_windows = window_bounds(frames, self.step, self.stride)
        local_windows = window_bounds(frames, self.step, self.step)
        x = x.float()
        whole_y, whole_x = split_bounds(height, NY), split_bounds(width, NX)
        grid_y = list(range(0, (height // self.cell) * self.cell + 1, self.cell))
        grid_x = list(range(0, (width // self.cell) * self.cell + 1, self.cell))
        rows, cuts_y = block_index(height, whole_y + grid_y, x.device)
        cols, cuts_x = block_index(width, whole_x + grid_x, x.device)
        pooled, local = [], []
        for dx, dy, no_motion in self._vectors(x):
            blocks = orientation_histograms(dx, dy, rows, cols, (len(cuts_y) - 1, len(cuts_x) - 1), no_motion)
            whole = window_means(cell_means(blocks, cuts_y, cuts_x, whole_y, whole_x), pool_windows)
            pooled.append(root_normalise(whole.reshape(n, len(pool_windows[0]) // NT, -1)))
            grid = window_means(cell_means(blocks, cuts_y, cuts_x, grid_y, grid_x), local_windows)
            local.append(root_normalise(_patch_descriptors(grid, len(local_windows[0]) // NT)))
        return {"pool": torch.cat(pooled, -1), "local": torch.cat(local, -1).reshape(n, -1, DIM)}

    def _vectors(self, x: Tensor) -> list[tuple[Tensor, Tensor, float | None]]:
        """(N, T, H, W) x/y components and no-vote threshold of HOG, HOF, MBHx, MBHy and colour."""
        luma = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1, 1)
        grey = (x[:, :3] * luma).sum(1)
        chroma = torch.tensor(CHROMA, dtype=x.dtype, device=x.device).view(2, 1, 3, 1, 1, 1)
        opponent = (x[None, :, :3] * chroma).sum(2)
        u, v = x[:, 3], x[:, 4]
        moving = (u, v)
        if self.camera == "median":
            moving = tuple(c - c.flatten(-2).median(-1).values[..., None, None] for c in (u, v))
        return [
            (*gradients(grey), None),
            (*moving, NO_MOTION),
            (*gradients(u), None),
            (*gradients(v), None),
            (opponent[0], opponent[1], NO_COLOUR),
        ]


def _patch_descriptors(cells: Tensor, steps: int) -> Tensor:
    """(N, steps * NT, Cy, Cx, bins) cell means -> (N, steps, P, NT * NY * NX * bins), P patches of NY x NX cells."""
    n, _, _, _, bins = cells.shape
    patches = cells.unfold(2, NY, 1).unfold(3, NX, 1)
    rows, cols = patches.shape[2:4]
    grouped = patches.reshape(n, steps, NT, rows, cols, bins, NY, NX).permute(0, 1, 3, 4, 2, 6, 7, 5)
    return grouped.reshape(n, steps, rows * cols, CELLS * bins)


@register_backbone(
    "hoghofmbh",
    inputs=("rgb", "flow"),
    weightless=True,
    version=3,
    histograms={"pool": HISTOGRAM_BLOCKS, "local": HISTOGRAM_BLOCKS},
)
def hoghofmbh(
    *, stream: str = "rgb", step: int = STEP, stride: int = STRIDE, cell: int = 16, camera: str = CAMERA_DEFAULT
) -> DenseDescriptors:
    """Dense HOG/HOF/MBH/colour of the frames and their cached flow: one feature set, no streams."""
    if stream != "rgb":
        raise ConfigError(
            "backbone hoghofmbh reads the frames and their flow together as one input: "
            "leave --stream at rgb (its features land in features/hoghofmbh)"
        )
    return DenseDescriptors(step=step, stride=stride, cell=cell, camera=camera)
