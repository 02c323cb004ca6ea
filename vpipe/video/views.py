"""Spatial views: how a decoded frame becomes a ``size × size`` network input.

li3d-bilstm §3.1.2 uses three views of a key frame — key-frame scaling, centre crop
and random crop with a margin rule — and training adds horizontal flips. A view is
pure geometry (:class:`Crop`), computed from the frame size alone when a plan is made,
stored in the plan, and applied later by :func:`apply_crop` to the decoded frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vpipe.errors import ConfigError


@dataclass(frozen=True)
class Crop:
    """Resize the frame to ``(resize_h, resize_w)``, keep the box ``(y, x, h, w)``, flip.

    Resizing first makes the box independent of the source resolution: a plan row
    stays valid for any decoder that returns the probed frame size, and the box is
    the one the margin rule was computed on.
    """

    resize_h: int
    resize_w: int
    y: int
    x: int
    h: int
    w: int
    flip: bool = False

    def __post_init__(self) -> None:
        for name in ("resize_h", "resize_w", "h", "w"):
            _require_int(name, getattr(self, name), minimum=1)
        for name in ("y", "x"):
            _require_int(name, getattr(self, name), minimum=0)
        if self.y + self.h > self.resize_h or self.x + self.w > self.resize_w:
            raise ConfigError(
                f"crop box y={self.y} x={self.x} h={self.h} w={self.w} does not fit in the resized "
                f"frame {self.resize_h}x{self.resize_w}; choose a box inside it"
            )


def _require_int(name: str, value: int, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _short_side_size(height: int, width: int, size: int, short_side: int) -> tuple[int, int]:
    """Frame size after scaling the short side to ``short_side`` (aspect kept).

    The long side is rounded to the nearest even integer (halves up), so both sides
    are even whenever ``short_side`` is; integer arithmetic keeps the result identical
    on every machine.
    """
    _require_int("height", height, minimum=1)
    _require_int("width", width, minimum=1)
    _require_int("size", size, minimum=1)
    _require_int("short_side", short_side, minimum=1)
    if short_side % 2:
        raise ConfigError(f"short_side must be even, got {short_side}; use {short_side + 1}")
    if short_side < size:
        raise ConfigError(
            f"short_side ({short_side}) is smaller than the crop size ({size}); "
            f"set short_side >= size"
        )
    if height <= width:
        return short_side, 2 * ((width * short_side + height) // (2 * height))
    return 2 * ((height * short_side + width) // (2 * width)), short_side


def scale_view(height: int, width: int, size: int) -> Crop:
    """Key-frame scaling (li3d-bilstm §3.1.2 (1)): resize the whole frame to size × size.

    Nothing is cut away, at the price of the aspect ratio.
    """
    _require_int("height", height, minimum=1)
    _require_int("width", width, minimum=1)
    _require_int("size", size, minimum=1)
    return Crop(size, size, 0, 0, size, size, False)


def center_view(height: int, width: int, size: int, short_side: int) -> Crop:
    """Centre crop (li3d-bilstm §3.1.2 (2)), the deterministic view used for testing.

    The short side is scaled to ``short_side`` keeping the aspect ratio, then the
    ``size × size`` box is cut at offset ``(L_origin − size) // 2`` on each axis.
    """
    resize_h, resize_w = _short_side_size(height, width, size, short_side)
    return Crop(resize_h, resize_w, (resize_h - size) // 2, (resize_w - size) // 2, size, size, False)


def margin_start_range(l_origin: int, l_need: int) -> tuple[int, int]:
    """Inclusive range of crop starts allowed by the margin rule of li3d-bilstm §3.1.2 (3).

    With ``margin = (L_origin − L_need) / 2`` the start lies in
    ``[max(0, 0.8·margin), min(1.2·margin, L_origin − L_need)]``. The integer starts
    are those inside that real interval: ``ceil(0.8·margin)`` to ``floor(1.2·margin)``,
    computed exactly as ``ceil(2D/5)`` and ``floor(3D/5)`` with ``D = L_origin − L_need``.
    For ``D`` = 1 or 3 the interval holds no integer; the start is then the centre
    offset ``D // 2``, the integer nearest to it.
    """
    slack = l_origin - l_need
    low, high = -(-2 * slack // 5), 3 * slack // 5
    if low > high:
        return slack // 2, slack // 2
    return low, high


def random_view(
    height: int,
    width: int,
    size: int,
    short_side: int,
    rng: np.random.Generator,
    flip_prob: float = 0.5,
) -> Crop:
    """Random crop with the margin rule (li3d-bilstm §3.1.2 (3)) and a random flip.

    After the short-side resize of :func:`center_view`, the start on each axis is drawn
    uniformly from :func:`margin_start_range` (rows first, then columns), so crops
    jitter around the centre by ±20 % of the margin instead of roaming over the whole
    frame. The frame is then flipped horizontally with probability ``flip_prob``.
    """
    if isinstance(flip_prob, bool) or not isinstance(flip_prob, (int, float)) or not 0.0 <= flip_prob <= 1.0:
        raise ConfigError(f"flip_prob must be a number in [0, 1], got {flip_prob!r}")
    resize_h, resize_w = _short_side_size(height, width, size, short_side)
    y_low, y_high = margin_start_range(resize_h, size)
    x_low, x_high = margin_start_range(resize_w, size)
    y = int(rng.integers(y_low, y_high, endpoint=True))
    x = int(rng.integers(x_low, x_high, endpoint=True))
    flip = bool(rng.random() < flip_prob)
    return Crop(resize_h, resize_w, y, x, size, size, flip)


def apply_crop(frames: np.ndarray, crop: Crop) -> np.ndarray:
    """Apply ``crop`` to ``frames`` of shape (T, H, W, C), uint8; returns (T, h, w, C).

    The resize is ``torch.nn.functional.interpolate`` (bilinear, ``antialias=True``,
    half-pixel centres), which matches PIL's bilinear resize (within one grey level),
    the reference most pretrained backbones were trained with; downscaling without
    antialiasing would alias fine texture. It runs on the uint8 frames in channels-last
    layout, torch's vectorised path, about 20 times faster than resampling in float32.
    Frames already at the target size are not resampled, so a crop-only view is an
    exact slice.

    Any channel count is accepted so that quantized flow (C = 2) can share the RGB
    view; flipping flow also requires negating its horizontal component, which is the
    caller's job since only the caller knows the quantization.
    """
    if frames.ndim != 4 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a (T, H, W, C) uint8 array, got {frames.dtype} {frames.shape}")
    rows, cols = slice(crop.y, crop.y + crop.h), slice(crop.x, crop.x + crop.w)
    import torch  # here: crops are also described (planned, fingerprinted) where torch is not loaded
    import torch.nn.functional as F

    video = torch.from_numpy(np.ascontiguousarray(frames))
    if frames.shape[1:3] == (crop.resize_h, crop.resize_w):
        video = video[:, rows, cols]
    else:
        planar = F.interpolate(
            video.permute(0, 3, 1, 2),
            size=(crop.resize_h, crop.resize_w),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        video = planar[:, :, rows, cols].permute(0, 2, 3, 1)
    if crop.flip:
        video = video.flip(2)
    return np.ascontiguousarray(video.numpy())
