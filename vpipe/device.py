"""Choosing the compute device, and the CUDA-only speed settings that go with it."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from vpipe.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is a user error."""
    if device not in DEVICES and not device.startswith("cuda:"):
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)} or cuda:N, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for, but this machine has no CUDA device; use --device cpu")
    return torch.device(device)


def autocast(device: torch.device, dtype: torch.dtype | None = torch.bfloat16) -> AbstractContextManager:
    """Autocast to ``dtype`` on CUDA (bf16 by default: tensor cores, no loss scaling
    needed); full precision on CPU or when ``dtype`` is None."""
    if device.type == "cuda" and dtype is not None:
        return torch.autocast("cuda", dtype=dtype)
    return nullcontext()


def default_videos_per_task(device: str) -> int:
    """Videos per task (and shard) for the flow and extract stages.

    On a GPU, a task is one DataLoader's life: large tasks amortise its start-up and
    keep decoding overlapped with many forward passes. On CPU, small tasks spread
    the videos over the dask workers and bound what a killed worker loses.
    """
    return 64 if resolve_device(device).type == "cuda" else 8
