"""Choosing the compute device, and the CUDA-only speed settings that go with it.

torch is imported by the functions that hand out torch objects, not by this module:
describing a stage (``vpipe status``, fingerprints) asks only which *kind* of device
``--device`` means, and :func:`device_kind` answers that without torch on a machine
with no GPU at all.
"""

from __future__ import annotations

import glob
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

from vpipe.errors import ConfigError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")


def check_device_name(device: str) -> str:
    """``device`` if it is spelled auto, cpu, cuda or cuda:N; whether it exists is
    :func:`resolve_device`'s question, asked where the work runs."""
    index = device.removeprefix("cuda:")
    if device not in DEVICES and not (device.startswith("cuda:") and index.isdigit()):
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)} or cuda:N, got {device!r}")
    return device


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA, or a CUDA index, that is absent is a user error."""
    import torch

    check_device_name(device)
    if device == "auto":
        return torch.device("cuda" if cuda_device_count() else "cpu")
    if device.startswith("cuda") and not cuda_device_count():
        raise ConfigError(f"--device {device} asked for, but this machine has no CUDA device; use --device cpu")
    if device.startswith("cuda:"):
        count = cuda_device_count()
        if int(device.removeprefix("cuda:")) >= count:
            raise ConfigError(f"--device {device}: this machine has CUDA devices cuda:0..cuda:{count - 1}; pick one of them")
    return torch.device(device)


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """Autocast to ``dtype`` on CUDA (bf16 is the usual choice: tensor cores, no loss
    scaling needed); full precision on CPU or when ``dtype`` is None."""
    if device.type == "cuda" and dtype is not None:
        import torch

        return torch.autocast("cuda", dtype=dtype)
    return nullcontext()


def concrete_device(device: str) -> str:
    """``--device`` with ``auto`` resolved here, an explicit ``cuda:N`` kept: what a stage
    hands its workers, so they compute on the kind of device its fingerprint names."""
    return device_kind(device) if device == "auto" else device


#: Device files of the GPU drivers torch's CUDA (or ROCm, which torch also calls cuda)
#: needs: NVIDIA's, AMD's kernel fusion driver, and WSL's GPU paravirtualisation.
GPU_DEVICE_FILES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")


def device_kind(device: str) -> str:
    """``cpu`` or ``cuda``: the kind of device ``--device`` resolves to here.

    Without importing torch where the answer is certain: ``cpu`` is cpu, and ``auto``
    on a machine with no GPU driver device at all (:data:`GPU_DEVICE_FILES`) is cpu,
    since torch cannot see a GPU there either. Otherwise (a GPU machine, or an
    explicit ``cuda``, whose absence is an error) torch decides, as
    :func:`resolve_device`.
    """
    check_device_name(device)
    if device == "cpu" or (device == "auto" and not any(glob.glob(pattern) for pattern in GPU_DEVICE_FILES)):
        return "cpu"
    return resolve_device(device).type


def default_videos_per_task(device: str) -> int:
    """Videos per task (and shard) for the flow and extract stages.

    On a GPU, a task is one DataLoader's life: large tasks amortise its start-up and
    keep decoding overlapped with many forward passes. On CPU, small tasks spread
    the videos over the dask workers and bound what a killed worker loses.
    """
    return 64 if device_kind(device) == "cuda" else 8


#: Compute precisions: the reference (fp32) and bf16 autocast, the CUDA default.
PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class ComputeSettings:
    """How a stage's numbers are made: device kind, compute precision, storage dtype.

    Recorded in every shard's provenance and part of every item fingerprint, so a
    cache computed on CPU in fp32 and one computed on CUDA under bf16 autocast never
    mix silently: asking for the other device makes the cached items stale and
    ``vpipe status``/``verify`` report them so. The choice (stale, not "mixed is
    acceptable") is because bf16 autocast changes features by ~1e-2 relative, more
    than float16 storage does, and a classifier trained on one and tested on the
    other would be judged on a difference nobody chose.

    The reference, CPU in fp32, adds nothing to a fingerprint (:meth:`fingerprint_parts`),
    so caches made before the settings were recorded, all on CPU, stay current.
    """

    device: str = "cpu"
    precision: str = "fp32"
    storage_dtype: str = "float16"

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"compute device kind must be cpu or cuda, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"compute precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @classmethod
    def for_device(cls, device: str, storage_dtype: str = "float16", precision: str | None = None) -> ComputeSettings:
        """The settings ``--device`` resolves to here: bf16 autocast on CUDA, fp32 on CPU."""
        kind = device_kind(device)
        return cls(kind, precision or ("bf16" if kind == "cuda" else "fp32"), storage_dtype)

    def fingerprint_parts(self) -> tuple:
        """What the settings add to an item fingerprint: nothing for the CPU fp32 reference."""
        if (self.device, self.precision) == ("cpu", "fp32"):
            return ()
        return ("compute", self.device, self.precision)

    def provenance(self) -> dict[str, str]:
        return {"device_kind": self.device, "precision": self.precision, "storage_dtype": self.storage_dtype}


def precision_autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Autocast for a compute precision on any device: bf16 autocast exists on CPU as well,
    which is what lets the bf16 path and its fp32 fallback be tested without a GPU."""
    if precision == "bf16":
        import torch

        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def cuda_device_count() -> int:
    """Visible CUDA devices; 0 without CUDA. One place to fake in tests."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0
