"""How many videos of a batch go through the model at once: micro-batches under a memory budget.

A head's training batch (``TrainConfig.batch_size``, 32 by default) is what one
optimiser step averages over. Map-reading heads keep hundreds of MB of activations per
video for the backward pass (vcm-sdd about 120 MB saved, deep-fusion about 45 MB), so a
whole batch of 32 does not fit a machine of 8 GB. The trainer therefore reads each
batch as *micro-batches* and accumulates their gradients, each weighted by its share
of the batch, before the one optimiser step: the step is the batch's, only the
forward/backward pass is cut (:mod:`vpipe.train.trainer`).

The micro-batch is the largest that fits ``memory_budget``, the bytes the whole
training process may take (default
:data:`vpipe.train.config.DEFAULT_MEMORY_BUDGET`, 6 GiB), by this rule::

    fixed     = RUNTIME_BYTES + cache_bytes + 5 × parameter bytes + largest parameter
    per video = 2 × its float32 inputs + ACTIVATION_FACTOR × its saved activations
    micro     = clamp((memory_budget − fixed) // per video, 1, batch_size)

where the five copies of the parameters are the weights, their gradients, AdamW's two
moments and the best epoch's copy; the largest parameter once more is its gradient's
temporary in the backward pass (411 MB for deep-fusion's Fc6); the inputs count twice
because a batch is built from per-video float32 copies; and the saved activations are
*measured*, not declared: one forward pass of the longest training video, in training
mode, counting the bytes of every tensor autograd keeps for the backward pass
(:func:`saved_activation_bytes`). The count depends on shapes alone, so a config and a
budget give the same micro-batch on any machine. ``ACTIVATION_FACTOR`` covers what the
backward pass allocates beside them: peak RSS above the inputs was at most 1.43 × the
saved bytes for vcm-sdd and deep-fusion at 1–8 videos (BENCHMARKS.md).

Heads that declare ``batch_coupled`` (BatchNorm over the batch, a loss that is not a
mean of per-video terms) always run whole batches: cutting them would change what is
trained.

Why the micro-batch is not part of a run's fingerprint: with dropout off, a cut step's
gradients equal the whole batch's to float rounding (a test checks it), like the
thread count's effect on sums. Dropout masks and other random draws are taken
micro-batch by micro-batch, so a run cut differently makes other draws of the same
distribution: the run is the same training, repeatable bit for bit at one micro-batch,
which ``config.json`` records (``environment.micro_batch``) beside the thread count.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import asdict, dataclass

import torch

from vpipe.errors import ConfigError
from vpipe.models.heads.registry import Head, HeadBatch

GiB = 1024**3
#: The interpreter with torch, h5py and pandas loaded, before any data or model (the
#: default head's process measured 1.30 GB with 0.56 GB of model state and 4 MB of inputs).
RUNTIME_BYTES = 3 * GiB // 4
#: Peak memory of a forward and backward pass per byte of saved activations (see above).
ACTIVATION_FACTOR = 1.5
#: Blocks from this size up are mapped on their own and returned to the system when freed.
LARGE_BLOCK_BYTES = 4 * 1024**2
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_large_blocks() -> bool:
    """Make glibc return freed blocks of :data:`LARGE_BLOCK_BYTES` and more to the system.

    glibc maps a large block on its own, but raises that threshold to the size of each
    mapped block freed, up to 32 MB; after the first freed video (10–40 MB of float32
    maps) every later one is carved from the heap, whose holes are kept, not returned.
    Reading vcm-sdd's 250-video map cache through the trainer's input path (no model)
    held 3.6 GB of RSS for 2.14 GB of cached inputs; with the threshold fixed, 2.5 GB,
    flat over four epochs, and a training step was no slower (BENCHMARKS.md). Setting
    the threshold also stops glibc from raising it. Process-wide, so set once by
    training; returns whether it applied (False off glibc).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES))
    except (OSError, AttributeError, TypeError):
        return False


@dataclass(frozen=True)
class MicroBatch:
    """How a run cuts its batches, and from what: recorded in ``config.json``'s environment."""

    size: int
    batch_size: int
    rule: str
    memory_budget: int | None = None
    fixed_bytes: int | None = None
    per_video_bytes: int | None = None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def describe(self) -> str:
        """One log line: how the batch is cut and why."""
        if self.size >= self.batch_size:
            cut = f"batches of {self.batch_size} run whole"
        else:
            cut = f"batches of {self.batch_size} run as micro-batches of {self.size}, gradients accumulated"
        if self.rule != "budget":
            return f"{cut} ({self.rule})"
        detail = (
            f"memory budget {self.memory_budget / GiB:.1f} GiB: {self.fixed_bytes / GiB:.2f} GiB fixed, "
            f"{self.per_video_bytes / 1e6:.0f} MB per video"
        )
        if self.fixed_bytes + self.per_video_bytes > self.memory_budget:
            detail += "; even one video exceeds the budget"
        return f"{cut} ({detail})"


def saved_activation_bytes(model: Head, batch: HeadBatch) -> int:
    """Bytes of the tensors autograd saves for the backward pass of ``batch``'s training loss.

    Each storage counts once (views of one tensor share it) and parameters, saved by
    every linear layer, not at all: they are the model's, not the batch's. The pass runs
    in training mode on the caller's device; the random state is restored afterwards, so
    measuring draws nothing from the run's random stream.
    """
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    was_training = model.training
    devices = [batch.labels.device] if batch.labels.device.type == "cuda" else []
    model.train()
    try:
        with torch.random.fork_rng(devices=devices), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, _ = model.training_loss(batch)
            del loss
    finally:
        model.train(was_training)
    return sum(saved.values())


def input_bytes(batch: HeadBatch) -> int:
    """Bytes of a batch's float32 inputs."""
    return sum(x.nbytes for x in batch.inputs.values())


def plan_micro_batch(
    model: Head,
    probe: HeadBatch | None,
    *,
    batch_size: int,
    memory_budget: int,
    cache_bytes: int,
    batch_coupled: bool = False,
    size: int | None = None,
) -> MicroBatch:
    """The micro-batch of a run (module docstring); ``probe`` holds its longest training video.

    ``size`` given is used as is (capped at the batch); a batch-coupled head runs whole
    batches whatever is asked. ``probe`` is needed only when the budget decides.
    """
    if batch_coupled:
        return MicroBatch(batch_size, batch_size, "the head couples the videos of a batch")
    if size is not None:
        if size < 1:
            raise ConfigError(f"--micro-batch must be at least 1, got {size}")
        return MicroBatch(min(size, batch_size), batch_size, "given")
    if memory_budget <= 0:
        raise ConfigError(f"--memory-budget must be positive, got {memory_budget} bytes")
    if probe is None:
        raise ValueError("sizing a micro-batch by the memory budget needs a probe batch")
    parameters = [p.numel() * p.element_size() for p in model.parameters()]
    fixed = RUNTIME_BYTES + cache_bytes + 5 * sum(parameters) + max(parameters, default=0)
    videos = len(probe)
    per_video = (2 * input_bytes(probe) + ACTIVATION_FACTOR * saved_activation_bytes(model, probe)) / videos
    per_video = max(1, round(per_video))
    fits = (memory_budget - fixed) // per_video
    return MicroBatch(int(min(max(fits, 1), batch_size)), batch_size, "budget", memory_budget, fixed, per_video)

