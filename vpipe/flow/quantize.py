"""Storage encodings for flow fields.

Two-stream models are trained on flow saved as 8-bit images: each component is
clipped to ``[-bound, bound]`` and mapped linearly to 0..255 (denseflow's
convention, ``bound = 20`` for I3D/TSN). Reproducing exactly that rounding keeps
our flow inputs bit-compatible with published weights. ``float16`` is offered for
uses that need the sub-pixel detail that 8 bits (0.157 px steps at bound 20) lose.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from vpipe.errors import ConfigError

__all__ = ["quantize_flow", "dequantize_flow", "encode_flow", "decode_flow", "flow_to_unit"]

Encoding = Literal["uint8", "float16"]


def quantize_flow(flow: torch.Tensor | np.ndarray, bound: float = 20.0) -> torch.Tensor:
    """uint8 codes ``round(255 * (v + bound) / (2 * bound))`` clipped to 0..255.

    Values beyond +-bound saturate. Rounding is half to even (``torch.round``),
    which only differs from half-up on exact ties.
    """
    flow = _as_float(flow, "flow")
    _check_bound(bound)
    codes = torch.round((flow + bound) * (255.0 / (2.0 * bound)))
    return codes.clamp_(0, 255).to(torch.uint8)


def dequantize_flow(codes: torch.Tensor | np.ndarray, bound: float = 20.0) -> torch.Tensor:
    """float32 flow back from uint8 codes; error <= bound / 255 for in-bound values."""
    codes = _as_tensor(codes, "codes")
    if codes.dtype != torch.uint8:
        raise ConfigError(f"dequantize_flow: codes must be uint8, got {codes.dtype}.")
    _check_bound(bound)
    return codes.to(torch.float32) * (2.0 * bound / 255.0) - bound


def encode_flow(flow: torch.Tensor | np.ndarray, dtype: Encoding = "uint8", bound: float = 20.0) -> torch.Tensor:
    """Flow in its storage dtype: quantized uint8 or plain float16 (``bound`` unused)."""
    if dtype == "uint8":
        return quantize_flow(flow, bound)
    if dtype == "float16":
        return _as_float(flow, "flow").to(torch.float16)
    raise ConfigError(f"encode_flow: dtype={dtype!r}; use 'uint8' or 'float16'.")


def decode_flow(stored: torch.Tensor | np.ndarray, bound: float = 20.0) -> torch.Tensor:
    """float32 flow from :func:`encode_flow` output; the encoding is read off the dtype."""
    stored = _as_tensor(stored, "stored")
    if stored.dtype == torch.uint8:
        return dequantize_flow(stored, bound)
    if stored.dtype == torch.float16:
        return stored.to(torch.float32)
    raise ConfigError(f"decode_flow: stored flow has dtype {stored.dtype}; expected uint8 or float16.")


def flow_to_unit(codes: torch.Tensor | np.ndarray) -> torch.Tensor:
    """float32 in [-1, 1] from uint8 codes, ``q / 255 * 2 - 1``.

    This is how pytorch-i3d normalises stored flow images before the flow stream,
    so it is the input scale the converted I3D flow weights expect.
    """
    codes = _as_tensor(codes, "codes")
    if codes.dtype != torch.uint8:
        raise ConfigError(f"flow_to_unit: codes must be uint8, got {codes.dtype}.")
    return codes.to(torch.float32) / 255.0 * 2.0 - 1.0


def _as_tensor(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, torch.Tensor):
        return x
    raise ConfigError(f"{name} must be a torch tensor or numpy array, got {type(x).__name__}.")


def _as_float(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    x = _as_tensor(x, name)
    if not x.dtype.is_floating_point:
        raise ConfigError(f"{name} must be floating point (pixels), got {x.dtype}.")
    return x.to(torch.float32)


def _check_bound(bound: float) -> None:
    if not bound > 0:
        raise ConfigError(f"bound={bound} must be > 0 (pixels).")
