"""Loading backbone weights from local files, with a record of exactly what was loaded.

Checkpoints come from several projects (torchvision, pytorch-i3d, 3D-ResNets-PyTorch) and
from our own saves, as ``.pt``/``.pth`` pickles or ``.safetensors``. Loading unwraps the
usual nesting (``{"state_dict": ...}``, ``{"model": ...}``, ``module.`` prefixes from
DataParallel), drops the classifier keys the backbone leaves out, applies the
architecture's pure ``checkpoint_filter`` (layout conversion, flow first-conv adaptation)
and then compares keys and shapes itself, so a mismatch is one :class:`WeightsError`
naming every missing, unexpected and mis-shaped key instead of a torch traceback.
"""

from __future__ import annotations

import collections
import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vpipe.errors import WeightsError

_LIST_LIMIT = 8
_NESTING_KEYS = ("state_dict", "model", "model_state_dict", "module")


@dataclass(frozen=True)
class WeightsInfo:
    """Provenance of a module's weights: the file's sha256 (``"random"`` when none)."""

    sha256: str
    path: str | None
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    mismatched: tuple[str, ...]


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB checkpoints stay out of memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_state_dict(path: str | Path, *, nesting: tuple[str, ...] = ()) -> dict[str, Tensor]:
    """Read a flat ``name -> tensor`` dict from a ``.safetensors`` or torch pickle file.

    ``nesting`` names further keys under which a family's training checkpoints keep the
    weights, tried before the usual ones (V-JEPA's ``target_encoder``).

    Pickles are read with ``weights_only=True`` so a checkpoint cannot run code;
    ``collections.Counter`` is allowed because 3D-ResNets-PyTorch checkpoints carry a
    MultiStepLR scheduler state whose milestones are one.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist: pass the path of a local checkpoint")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            with torch.serialization.safe_globals([collections.Counter]):
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {path}: {exc}") from exc
    return _unwrap(obj, path, (*nesting, *_NESTING_KEYS))


def _unwrap(obj: Any, path: Path, nesting: tuple[str, ...]) -> dict[str, Tensor]:
    while isinstance(obj, Mapping) and not _is_flat(obj):
        inner = next((obj[k] for k in nesting if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            raise WeightsError(
                f"{path} holds no state dict: top-level keys are {_short(sorted(map(str, obj)))}; "
                f"expected tensors or one of {', '.join(nesting)}"
            )
        obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} holds a {type(obj).__name__}, not a state dict")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _is_flat(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, Tensor) for v in obj.values())


def adapt_input_conv(state: dict[str, Tensor], key: str, in_channels: int) -> dict[str, Tensor]:
    """Cross-modality initialisation of a first conv (Wang et al., TSN).

    An RGB kernel ``(O, 3, ...)`` becomes ``(O, in_channels, ...)`` by averaging over the
    colour channels and replicating the mean across every flow channel, so an ImageNet or
    Kinetics RGB checkpoint can start a flow stream. Returns a new dict; warns because the
    loaded first layer is then not the one the checkpoint was trained with.
    """
    weight = state.get(key)
    if weight is None or weight.dim() < 3 or weight.shape[1] == in_channels or weight.shape[1] != 3:
        return state
    warnings.warn(
        f"adapting RGB first conv {key} {tuple(weight.shape)} to {in_channels} input channels "
        "(mean over RGB, replicated): cross-modality initialisation of a flow stream",
        stacklevel=3,
    )
    adapted = weight.mean(dim=1, keepdim=True).expand(-1, in_channels, *weight.shape[2:]).contiguous()
    return {**state, key: adapted}


def adapt_first_conv(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """Checkpoint filter for layouts that load as they are, except an RGB first conv feeding
    a flow model, which gets :func:`adapt_input_conv`."""
    return adapt_input_conv(state, model.spec.first_conv, model.spec.in_channels)


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> WeightsInfo:
    """Load a checkpoint into ``model`` and return what was loaded.

    With ``strict`` any missing, unexpected or mis-shaped key raises :class:`WeightsError`;
    the only keys ever ignored are the classifier prefixes in ``model.spec.head_keys`` and
    BatchNorm ``num_batches_tracked`` counters, which checkpoints saved before PyTorch
    0.4.1 (the released pytorch-i3d ones among them) do not have. Without ``strict`` the
    matching keys load and the rest are reported in the returned :class:`WeightsInfo`.
    """
    spec = getattr(model, "spec", None)
    reader = getattr(spec, "checkpoint_reader", None) or read_state_dict
    state = reader(Path(path))
    if spec is not None:
        state = {k: v for k, v in state.items() if not k.startswith(tuple(spec.head_keys))}
        if spec.checkpoint_filter is not None:
            state = spec.checkpoint_filter(state, model)

    expected = model.state_dict()
    missing = tuple(k for k in expected if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = tuple(k for k in state if k not in expected)
    mismatched = tuple(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state
        if k in expected and state[k].shape != expected[k].shape
    )
    if strict and (missing or unexpected or mismatched):
        name = f"{spec.name}-{spec.stream}" if spec is not None else type(model).__name__
        layout = f" (expected layout: {spec.checkpoint_layout})" if spec is not None else ""
        problems = "; ".join(
            f"{label} {len(keys)}: {_short(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", mismatched))
            if keys
        )
        raise WeightsError(f"weights {path} do not match {name}{layout}: {problems}")

    bad = {m.split(":")[0] for m in mismatched}
    loadable = {k: v for k, v in state.items() if k in expected and k not in bad}
    model.load_state_dict(loadable, strict=False)
    return WeightsInfo(
        sha256=sha256_file(path),
        path=str(path),
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
    )


def _short(items: tuple[str, ...] | list[str]) -> str:
    shown = ", ".join(items[:_LIST_LIMIT])
    more = len(items) - _LIST_LIMIT
    return f"{shown}, ... ({more} more)" if more > 0 else shown
