"""Batched TV-L1 optical flow in torch, step for step the OpenCV DualTVL1 solver.

Two-stream action-recognition models (I3D, TSN) are trained on flow computed with
OpenCV's ``DualTVL1OpticalFlow`` and quantized by denseflow. Features only transfer
if our flow matches that solver closely, so this module follows its order of
operations (``tvl1flow.cpp``, CPU path) instead of a textbook TV-L1:

* pyramid by repeated bilinear resize with factor ``scale_step`` (OpenCV's
  ``INTER_LINEAR`` mapping ``src = (dst + 0.5) / step - 0.5``, clamped at borders,
  output size rounded) until ``nscales`` levels or a side below 16 px;
* per level and warp: bicubic warp (a = -0.75, taps outside the image read 0, as
  ``remap`` with its default constant border) of ``I1`` and of its centred gradient,
  then the constant part of the linearised data term;
* outer iterations start with a 5x5 median filter of the flow (replicated border);
  inner iterations do thresholding, divergence of the dual field, primal update
  with the squared-update error, forward gradient and dual update;
* a warp stops when the summed squared update drops to ``epsilon**2 * H * W``;
  the error carries over from the inner loop into the outer loop's test;
* flow is bilinearly upsampled to the next level and multiplied by ``1/scale_step``.

Everything runs on the whole batch at once. Each pair keeps its own stopping state:
a pair that has converged in a warp stops (it takes no more iterations, including
median filters) while the others continue, so a batch gives the same flow as its
pairs run one by one. Converged pairs leave the working batch at each convergence
check, so a batch of 256 does not pay 256 pairs' work for its slowest pair; between
checks they are frozen by masking. On CUDA the check, which needs a host sync, is
only made every ``sync_every`` iterations; frozen pairs stay frozen, so this changes
speed, never results.

Deviation: in the thresholding step, pixels whose warped gradient is nearly zero
(``|grad I1|^2 <= FLT_EPSILON``) get no data-term update, while OpenCV may move them
by ``lambda * theta * |grad I1|``, i.e. at most about 2e-5 px.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from vpipe.catalog import OPENCV_DEFAULTS, resolved_tvl1_params, tvl1_params_off_reference
from vpipe.errors import ConfigError

__all__ = ["tvl1", "to_gray", "OPENCV_DEFAULTS", "resolved_tvl1_params", "tvl1_params_off_reference"]

_FLT_EPSILON = float(np.finfo(np.float32).eps)
_MIN_LEVEL_SIDE = 16


def tvl1(
    prev: torch.Tensor | np.ndarray,
    next: torch.Tensor | np.ndarray,
    *,
    tau: float = 0.25,
    lambda_: float = 0.15,
    theta: float = 0.3,
    nscales: int = 5,
    warps: int = 5,
    epsilon: float = 0.01,
    inner_iterations: int = 30,
    outer_iterations: int = 10,
    scale_step: float = 0.8,
    gamma: float = 0.0,
    median_filtering: int = 5,
    channel_order: str = "rgb",
    sync_every: int | None = None,
    shrink: bool = True,
) -> torch.Tensor:
    """Dense TV-L1 flow from ``prev`` to ``next`` with OpenCV's defaults.

    Args:
        prev, next: frames of shape (N, H, W) or (H, W) in grey, or (N, H, W, 3) /
            (H, W, 3) in colour; uint8, or float on the 0-255 scale (unlike OpenCV,
            which expects float frames on 0-1). Tensors may live on any device;
            numpy arrays are accepted and treated as CPU tensors.
        tau, lambda_, theta, nscales, warps, epsilon, inner_iterations,
        outer_iterations, scale_step, median_filtering: as in OpenCV's
            ``DualTVL1OpticalFlow`` (``lambda_`` is its ``lambda``).
        gamma: only 0 is supported (the illumination term of OpenCV is not
            implemented; nobody in the action-recognition pipelines uses it).
        channel_order: "rgb" (what the decoders deliver) or "bgr" (OpenCV images);
            colour frames are turned to grey with OpenCV's own ``*2GRAY`` formula.
        sync_every: iterations between checks whether the whole batch converged.
            Default 1 on CPU (the check is free) and 10 on other devices.
        shrink: drop converged pairs from the batch at each check (default), or
            keep them masked (the reference the benchmark compares against).

    Returns:
        float32 flow on the input's device, shape (N, 2, H, W), or (2, H, W) for
        unbatched input; channel 0 is x, channel 1 is y, in pixels, such that
        ``next(p + flow(p)) ~= prev(p)``.
    """
    if gamma != 0:
        raise ConfigError(f"tvl1: gamma={gamma} is not supported; use gamma=0 (OpenCV's default).")
    if median_filtering not in (0, 1, 3, 5):
        raise ConfigError(f"tvl1: median_filtering={median_filtering}; use 0, 1 (off), 3 or 5.")
    if nscales < 1 or warps < 1 or inner_iterations < 1 or outer_iterations < 1:
        raise ConfigError("tvl1: nscales, warps, inner_iterations and outer_iterations must be >= 1.")
    if not 0 < scale_step < 1:
        raise ConfigError(f"tvl1: scale_step={scale_step} must lie in (0, 1).")
    i0, batched = _prepare(prev, "prev", channel_order)
    i1, _ = _prepare(next, "next", channel_order)
    if i0.shape != i1.shape or i0.device != i1.device:
        raise ConfigError(
            f"tvl1: prev {tuple(i0.shape)} on {i0.device} and next {tuple(i1.shape)} on "
            f"{i1.device} differ; pass frames of one size on one device."
        )
    if i0.shape[-1] < 3 or i0.shape[-2] < 3:
        raise ConfigError(f"tvl1: frames of {tuple(i0.shape[-2:])} px are too small (need >= 3x3).")
    if sync_every is None:
        sync_every = 1 if i0.device.type == "cpu" else 10
    solver = _Solver(
        l_t=lambda_ * theta,
        theta=theta,
        taut=tau / theta,
        epsilon=epsilon,
        warps=warps,
        inner=inner_iterations,
        outer=outer_iterations,
        median=median_filtering if median_filtering > 1 else 0,
        sync_every=max(1, sync_every),
        shrink=shrink,
    )
    flow = solver.pyramid(i0, i1, nscales, scale_step)
    return flow if batched else flow[0]


def to_gray(frames: torch.Tensor, channel_order: str = "rgb") -> torch.Tensor:
    """Grey frames (..., H, W) from colour (..., H, W, 3) exactly as ``cv2.cvtColor``.

    uint8 uses OpenCV's 15-bit fixed-point weights with rounding, which makes grey
    values bit-identical to ``COLOR_RGB2GRAY`` for all 2^24 colours (checked
    exhaustively against OpenCV 5.0); float uses 0.299, 0.587, 0.114 in float32.
    """
    if channel_order not in ("rgb", "bgr"):
        raise ConfigError(f"channel_order={channel_order!r}; use 'rgb' or 'bgr'.")
    order = (0, 1, 2) if channel_order == "rgb" else (2, 1, 0)
    r, g, b = (frames[..., c] for c in order)
    if frames.dtype == torch.uint8:
        r, g, b = r.to(torch.int32), g.to(torch.int32), b.to(torch.int32)
        return ((r * 9798 + g * 19235 + b * 3735 + (1 << 14)) >> 15).to(torch.uint8)
    r, g, b = r.float(), g.float(), b.float()
    return r * 0.299 + g * 0.587 + b * 0.114


def _prepare(frames: torch.Tensor | np.ndarray, name: str, channel_order: str) -> tuple[torch.Tensor, bool]:
    """Float32 (N, H, W) grey frames on 0-255 plus whether the input had a batch axis."""
    if isinstance(frames, np.ndarray):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise ConfigError(f"tvl1: {name} must be a torch tensor or numpy array, got {type(frames).__name__}.")
    if frames.dtype != torch.uint8 and not frames.dtype.is_floating_point:
        raise ConfigError(f"tvl1: {name} has dtype {frames.dtype}; pass uint8 or float on 0-255.")
    colour = frames.ndim in (3, 4) and frames.shape[-1] == 3
    if colour:
        frames = to_gray(frames, channel_order)
    if frames.ndim not in (2, 3):
        raise ConfigError(
            f"tvl1: {name} has shape {tuple(frames.shape)}; expected (N,H,W), (H,W), (N,H,W,3) or (H,W,3)."
        )
    batched = frames.ndim == 3
    return frames.reshape(-1, *frames.shape[-2:]).float().contiguous(), batched


class _Solver:
    """The per-level TV-L1 iterations on a batch; holds the scalar parameters."""

    def __init__(
        self,
        *,
        l_t: float,
        theta: float,
        taut: float,
        epsilon: float,
        warps: int,
        inner: int,
        outer: int,
        median: int,
        sync_every: int,
        shrink: bool,
    ) -> None:
        self.l_t = l_t
        self.theta = theta
        self.taut = taut
        self.epsilon = epsilon
        self.warps = warps
        self.inner = inner
        self.outer = outer
        self.median = median
        self.sync_every = sync_every
        self.shrink = shrink

    def pyramid(self, i0: torch.Tensor, i1: torch.Tensor, nscales: int, step: float) -> torch.Tensor:
        """Coarse-to-fine solve; images (N, H, W) float32, flow (N, 2, H, W)."""
        levels = [torch.stack([i0, i1], dim=1)]
        for _ in range(1, nscales):
            h, w = levels[-1].shape[-2:]
            size = (round(h * step), round(w * step))
            if size[0] < _MIN_LEVEL_SIDE or size[1] < _MIN_LEVEL_SIDE:
                break
            levels.append(_resize_linear(levels[-1], size, 1.0 / step))
        coarsest = levels[-1]
        u = coarsest.new_zeros(coarsest.shape[0], 2, *coarsest.shape[-2:])
        for s in range(len(levels) - 1, -1, -1):
            u = self.level(levels[s][:, 0].contiguous(), levels[s][:, 1].contiguous(), u.contiguous())
            if s > 0:
                h, w = u.shape[-2:]
                size = levels[s - 1].shape[-2:]
                u = _resize_linear(u, size, (h / size[0], w / size[1])) * (1.0 / step)
        return u

    def level(self, i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """All warps of one pyramid level; ``u`` (N, 2, H, W) is the initial flow.

        The loop body works in place on buffers allocated once per level: fresh
        tensors of image size cost more than the arithmetic on CPU.

        Each warp starts with the whole batch. With ``shrink`` on, the pairs that
        converged are dropped from the working tensors at each convergence check
        (their flow and dual field written back first), so the iterations left
        cost in proportion to the pairs still moving instead of the batch size.
        Between checks, and with ``shrink`` off, converged pairs are masked.
        Every operation is per pair, so both ways give bit-identical flow.
        """
        n, h, w = i0.shape
        threshold = self.epsilon * self.epsilon * h * w
        i1_stack = torch.cat([i1[:, None], _centered_gradient(i1)], dim=1)
        base = _pixel_grid(h, w, u.device)
        full = _Buffers(n, h, w, u.device)
        median = _Median(u.shape, u.device) if self.median else None
        p_all = full.p.zero_()
        count = 0
        for _ in range(self.warps):
            warped = _warp_bicubic(i1_stack, u, base)
            i1w, i1w_grad = warped[:, 0], warped[:, 1:].contiguous()
            grad = (i1w_grad * i1w_grad).sum(dim=1)
            rho_c = i1w - (i1w_grad * u).sum(dim=1) - i0
            inv_grad = torch.where(grad > _FLT_EPSILON, 1.0 / grad, torch.zeros_like(grad))
            work = _Working(u, p_all, i1w_grad, rho_c, inv_grad, full)
            active = torch.ones(n, dtype=torch.bool, device=u.device)
            mask = None
            done = False
            for _ in range(self.outer):
                if median is not None:
                    filtered = median(work.u, self.median)
                    if mask is None:
                        work.u.copy_(filtered)
                    else:
                        torch.where(active.view(-1, 1, 1, 1), filtered, work.u, out=work.u)
                for _ in range(self.inner):
                    error = self.iterate(work, mask)
                    torch.logical_and(active, error > threshold, out=active)
                    count += 1
                    if count % self.sync_every == 0:
                        remaining = int(active.sum())
                        if remaining == 0:
                            done = True
                            break
                        if remaining == active.shape[0]:
                            mask = None
                        elif self.shrink:
                            work = work.keep(active, u, p_all)
                            active = torch.ones(remaining, dtype=torch.bool, device=u.device)
                            mask = None
                        else:
                            mask = active.to(u.dtype).view(-1, 1, 1, 1)
                    else:
                        mask = active.to(u.dtype).view(-1, 1, 1, 1)
                if done:
                    break
            work.write_back(u, p_all)
        return u

    def iterate(self, work: _Working, mask: torch.Tensor | None) -> torch.Tensor:
        """One inner iteration, updating ``work.u`` (N,2,H,W) and ``work.p`` (N,2,2,H,W) in place.

        Returns each pair's summed squared update of ``u``. Pairs with ``mask`` 0
        get a zero update of ``u`` and a zero flow gradient for the dual step,
        which leaves both ``u`` and ``p`` bit-identical.

        Thresholding: OpenCV's three cases (a step of l_t along the gradient when
        the residual is beyond +-l_t |grad|^2, else the step to zero residual) are
        one clamp of ``rho / |grad|^2`` to [-l_t, l_t].
        """
        u, p, i1w_grad, buf = work.u, work.p, work.i1w_grad, work.buffers
        torch.mul(i1w_grad, u, out=buf.pair)
        rho = torch.add(buf.pair[:, 0], buf.pair[:, 1], out=buf.rho)
        rho.add_(work.rho_c).mul_(work.inv_grad).clamp_(-self.l_t, self.l_t)
        div = torch.add(p[:, :, 0], p[:, :, 1], out=buf.div)
        div[..., 1:].sub_(p[:, :, 0, :, :-1])
        div[..., 1:, :].sub_(p[:, :, 1, :-1, :])
        delta = torch.mul(div, self.theta, out=buf.delta)
        delta.addcmul_(i1w_grad, rho[:, None], value=-1.0)
        if mask is not None:
            delta.mul_(mask)
        u.add_(delta)
        error = torch.linalg.vector_norm(delta.view(delta.shape[0], -1), dim=1).square_()
        g = buf.g
        torch.sub(u[..., 1:], u[..., :-1], out=g[:, :, 0, :, :-1])
        torch.sub(u[..., 1:, :], u[..., :-1, :], out=g[:, :, 1, :-1, :])
        if mask is not None:
            g.mul_(mask[..., None])
        norm = torch.mul(g[:, :, 0], g[:, :, 0], out=buf.norm)
        norm.addcmul_(g[:, :, 1], g[:, :, 1]).sqrt_().mul_(self.taut).add_(1.0)
        p.add_(g, alpha=self.taut).div_(norm[:, :, None])
        return error


class _Buffers:
    """Scratch tensors for :meth:`_Solver.iterate`, allocated once per level.

    ``g`` keeps zeros in its last column (x) and last row (y) forever: that is the
    forward gradient's border rule, so only the interior is ever written.
    """

    def __init__(self, n: int, h: int, w: int, device: torch.device) -> None:
        def empty(*shape: int) -> torch.Tensor:
            return torch.empty(shape, device=device)

        self.p = empty(n, 2, 2, h, w)
        self.g = torch.zeros(n, 2, 2, h, w, device=device)
        self.pair = empty(n, 2, h, w)
        self.rho = empty(n, h, w)
        self.div = empty(n, 2, h, w)
        self.delta = empty(n, 2, h, w)
        self.norm = empty(n, 2, h, w)

    def head(self, m: int) -> _Buffers:
        """The first ``m`` pairs' scratch space, as views (no allocation).

        Views of the first rows stay contiguous, and ``g``'s zero borders hold in
        them because only interiors are ever written.
        """
        part = object.__new__(_Buffers)
        for name in ("p", "g", "pair", "rho", "div", "delta", "norm"):
            setattr(part, name, getattr(self, name)[:m])
        return part


class _Working:
    """The pairs of one warp still iterating, and where they sit in the batch.

    Starts as the whole batch (the tensors themselves, no copy); :meth:`keep`
    writes the current flow and dual field back into the batch tensors and keeps
    copies of the still-active rows only.
    """

    def __init__(
        self,
        u: torch.Tensor,
        p: torch.Tensor,
        i1w_grad: torch.Tensor,
        rho_c: torch.Tensor,
        inv_grad: torch.Tensor,
        buffers: _Buffers,
        rows: torch.Tensor | None = None,
    ) -> None:
        self.u, self.p = u, p
        self.i1w_grad, self.rho_c, self.inv_grad = i1w_grad, rho_c, inv_grad
        self.buffers = buffers
        self.rows = rows

    def write_back(self, u: torch.Tensor, p: torch.Tensor) -> None:
        """Copy this subset's flow and dual field into the batch tensors."""
        if self.rows is not None:
            u[self.rows] = self.u
            p[self.rows] = self.p

    def keep(self, active: torch.Tensor, u: torch.Tensor, p: torch.Tensor) -> _Working:
        """The subset of rows where ``active`` holds, after writing all rows back."""
        self.write_back(u, p)
        local = active.nonzero().squeeze(1)
        rows = local if self.rows is None else self.rows[local]
        return _Working(
            self.u[local],
            self.p[local],
            self.i1w_grad[local],
            self.rho_c[local],
            self.inv_grad[local],
            self.buffers.head(len(local)),
            rows,
        )


def _centered_gradient(img: torch.Tensor) -> torch.Tensor:
    """(N, 2, H, W) half central differences; at borders the one-sided half difference.

    Replicating the border pixel and taking central differences gives exactly
    OpenCV's ``centeredGradient`` edge rules, including the corners.
    """
    padded = F.pad(img[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    dx = 0.5 * (padded[:, 1:-1, 2:] - padded[:, 1:-1, :-2])
    dy = 0.5 * (padded[:, 2:, 1:-1] - padded[:, :-2, 1:-1])
    return torch.stack([dx, dy], dim=1)


def _pixel_grid(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(1, H, W, 2) pixel coordinates (x, y) expressed in grid_sample's [-1, 1] units."""
    ys = torch.linspace(-1.0, 1.0, h, device=device)
    xs = torch.linspace(-1.0, 1.0, w, device=device)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)[None]


def _warp_bicubic(images: torch.Tensor, u: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Sample ``images`` (N, C, H, W) at ``p + u(p)``: bicubic, a = -0.75, zeros outside.

    grid_sample's bicubic with zero padding reads out-of-image taps as 0, which is
    what ``cv2.remap(..., INTER_CUBIC)`` does with its default constant border.
    Where the flow is exactly zero the pixel is copied: grid_sample's normalised
    coordinates are off by float rounding there, while OpenCV samples whole pixels
    exactly. Without this a still pair gets ~1e-4 of noise, which this solver's
    border handling (in OpenCV too) amplifies to tenths of a pixel.
    """
    h, w = u.shape[-2:]
    scale = u.new_tensor([2.0 / max(w - 1, 1), 2.0 / max(h - 1, 1)])
    grid = base + u.permute(0, 2, 3, 1) * scale
    sampled = F.grid_sample(images, grid, mode="bicubic", padding_mode="zeros", align_corners=True)
    still = (u == 0).all(dim=1, keepdim=True)
    return torch.where(still, images, sampled)


class _Median:
    """k x k median per channel with replicated borders, like ``cv2.medianBlur`` on float.

    Selection network instead of ``unfold(...).median()``: the k*k shifted views go
    through Batcher's odd-even merge sort, pruned to the comparators that decide the
    middle rank. That is ~200 min/max passes for 5x5, all vectorised over the batch
    and several times faster than sorting unfolded windows. Buffers are reused
    between calls because the filter runs once per outer iteration; a batch that
    shrank uses their first rows.
    """

    def __init__(self, shape: torch.Size, device: torch.device) -> None:
        self.shape = shape
        self.device = device
        self.pool: list[torch.Tensor] = []

    def __call__(self, u: torch.Tensor, k: int) -> torch.Tensor:
        r = k // 2
        h, w = u.shape[-2:]
        padded = F.pad(u, (r, r, r, r), mode="replicate")
        slots = [padded[..., dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k)]
        owned = [False] * len(slots)
        n = u.shape[0]
        free = [buffer[:n] for buffer in self.pool]
        network, middle = _selection_network(k * k)
        for op, a, b in network:
            if op == "min":
                out = slots[a] if owned[a] else self._take(free, n)
                slots[a] = torch.minimum(slots[a], slots[b], out=out)
                owned[a] = True
            elif op == "max":
                out = slots[b] if owned[b] else self._take(free, n)
                slots[b] = torch.maximum(slots[a], slots[b], out=out)
                owned[b] = True
            else:
                low = torch.minimum(slots[a], slots[b], out=self._take(free, n))
                out = slots[b] if owned[b] else self._take(free, n)
                slots[b] = torch.maximum(slots[a], slots[b], out=out)
                if owned[a]:
                    free.append(slots[a])
                slots[a] = low
                owned[a] = owned[b] = True
        return slots[middle]

    def _take(self, free: list[torch.Tensor], n: int) -> torch.Tensor:
        if free:
            return free.pop()
        buffer = torch.empty(self.shape, device=self.device)
        self.pool.append(buffer)
        return buffer[:n]


@functools.cache
def _selection_network(n: int) -> tuple[tuple[tuple[str, int, int], ...], int]:
    """Comparators that leave the median of ``n`` values (odd ``n``) in one slot.

    Returns the comparators (kind, low slot, high slot) and the slot of the median.

    Batcher's odd-even merge sort on the next power of two, with the extra wires
    holding +inf: comparators against +inf are dropped (or become a relabelling when
    the +inf sits on the low side). Then, walking backwards from the middle rank,
    only comparators feeding it are kept, as "min", "max" or both ("ce").
    """
    size = 1 << (n - 1).bit_length()
    slot_of: list[int | None] = [*range(n), *([None] * (size - n))]
    forward: list[tuple[int, int]] = []
    for lo, hi in _batcher_pairs(size):
        a, b = slot_of[lo], slot_of[hi]
        if b is None:
            continue
        if a is None:
            slot_of[lo], slot_of[hi] = b, None
            continue
        forward.append((a, b))
    needed = {slot_of[n // 2]}
    kept: list[tuple[str, int, int]] = []
    for a, b in reversed(forward):
        if a in needed and b in needed:
            kept.append(("ce", a, b))
        elif a in needed:
            kept.append(("min", a, b))
        elif b in needed:
            kept.append(("max", a, b))
        else:
            continue
        needed |= {a, b}
    return tuple(reversed(kept)), slot_of[n // 2]


def _batcher_pairs(size: int) -> list[tuple[int, int]]:
    """Comparator wire pairs (low, high) of Batcher's odd-even merge sort, ``size`` = 2^m."""
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
            k //= 2
        p *= 2
    return pairs


def _resize_linear(x: torch.Tensor, size: tuple[int, int], scale: float | tuple[float, float]) -> torch.Tensor:
    """Bilinear resize of (N, C, H, W) with OpenCV's ``INTER_LINEAR`` coordinate rule.

    ``scale`` is source pixels per output pixel (OpenCV's ``1 / fx`` when a factor is
    given, ``src / dst`` when a size is). Samples left of the first or right of the
    last pixel take that pixel, as OpenCV clamps them.
    """
    sy, sx = scale if isinstance(scale, tuple) else (scale, scale)
    x = _resize_axis(x, size[1], sx, dim=3)
    return _resize_axis(x, size[0], sy, dim=2)


def _resize_axis(x: torch.Tensor, out: int, scale: float, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    src = (np.arange(out, dtype=np.float64) + 0.5) * scale - 0.5
    lo = np.floor(src)
    frac = src - lo
    frac[lo < 0] = 0.0
    lo[lo < 0] = 0
    high = lo >= n - 1
    frac[high] = 0.0
    lo[high] = n - 1
    hi = np.minimum(lo + 1, n - 1)
    shape = [1] * x.ndim
    shape[dim] = out
    weight = torch.from_numpy(frac.astype(np.float32)).to(x.device).view(shape)
    a = x.index_select(dim, torch.from_numpy(lo.astype(np.int64)).to(x.device))
    b = x.index_select(dim, torch.from_numpy(hi.astype(np.int64)).to(x.device))
    return torch.lerp(a, b, weight)

