"""Inception-v1 I3D (Carreira & Zisserman, 2017) and its lightweight variant LI3D.

I3D is state-dict compatible with pytorch-i3d's ``InceptionI3d`` (``rgb_imagenet.pt``,
``flow_imagenet.pt`` load strictly; its ``logits.*`` classifier is dropped) and pads the
same way: TensorFlow "SAME" padding computed from the input size at run time, split with
the smaller half in front, zeros also in front of max pools. BatchNorm uses eps 1e-3 and
momentum 0.01 as in the TF original.

LI3D (li3d-bilstm.md §3.2) replaces every 3×3×3 conv inside the Inception blocks by a
spatial 1×3×3 conv followed by a temporal 3×1×1 conv, both at the branch's output width,
with BN+ReLU after each (as S3D does). The stem (7×7×7 ``Conv3d_1a_7x7`` and 3×3×3
``Conv3d_2c_3x3``) stays 3D because the paper only changes the Inception module; that
gives 8.048M parameters (rgb) against I3D's 12.287M. The paper reports 12.28M → 8.16M.
Factorising the stem too would give 7.910M; the temporal-first order (3×1×1 to the output
width, then 1×3×3) would give 10.240M, further from the paper, so spatial-first it is.

Cached layer ``pool``: Mixed_5c averaged over space at every temporal step, (τ, 1024)
with τ = ⌈T/8⌉. pytorch-i3d's own 2×7×7 average pool with stride 1 would give τ = T/8 − 1
and needs a 224-pixel input; averaging over space only keeps one vector per temporal
step for the BiLSTM head and works for any input size.

Extraction runs :meth:`InceptionI3D.fused`, an inference copy that computes the same
function faster on CPU (see :class:`FusedInceptionI3D`); the trainable module above is
the reference it is tested against and the layout checkpoints load into.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpipe.models.backbones.registry import (
    BackboneSpec,
    CheckpointFilter,
    check_input,
    finalize_spec,
    register_backbone,
)
from vpipe.models.weights import adapt_first_conv

Triple = tuple[int, int, int]
ConvMaker = Callable[[int, int], nn.Module]

_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding (front, back) for one dimension of length ``size``."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: Tensor, kernel: Triple, stride: Triple) -> Tensor:
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride)):
        pads.extend(same_padding(size, k, s))
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d + BatchNorm + ReLU with "SAME" padding decided from the input size."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: Triple = (1, 1, 1),
        stride: Triple = (1, 1, 1),
    ) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride
        self.conv3d = nn.Conv3d(in_channels, out_channels, kernel, stride=stride, bias=False)
        self.bn = nn.BatchNorm3d(out_channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv3d(_pad_same(x, self.kernel, self.stride))))


class MaxPool3dSame(nn.Module):
    """Max pool with "SAME" zero padding; inputs follow a ReLU, so zeros never win wrongly."""

    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel = kernel
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class SeparableUnit3D(nn.Module):
    """A 3×3×3 unit factorised as spatial 1×3×3 then temporal 3×1×1, each with BN+ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.spatial = Unit3D(in_channels, out_channels, (1, 3, 3))
        self.temporal = Unit3D(out_channels, out_channels, (3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.temporal(self.spatial(x))


def conv3x3x3(in_channels: int, out_channels: int) -> nn.Module:
    """The full 3D unit I3D uses inside its Inception blocks."""
    return Unit3D(in_channels, out_channels, (3, 3, 3))


class InceptionBlock(nn.Module):
    """Four parallel branches concatenated on channels; ``conv`` makes the 3×3×3 units.

    ``widths`` = (b0, b1a, b1b, b2a, b2b, b3b) output channels, in pytorch-i3d's order.
    """

    def __init__(self, in_channels: int, widths: tuple[int, ...], conv: ConvMaker) -> None:
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1a)
        self.b1b = conv(w1a, w1b)
        self.b2a = Unit3D(in_channels, w2a)
        self.b2b = conv(w2a, w2b)
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3b)
        self.out_channels = w0 + w1b + w2b + w3b

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1
        )


_BLOCKS: tuple[tuple[str, tuple], ...] = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)


class InceptionI3D(nn.Module):
    """Inception-v1 inflated to 3D up to Mixed_5c; module names follow pytorch-i3d."""

    def __init__(self, spec: BackboneSpec, conv: ConvMaker) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(spec.in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        channels = 192
        for name, cfg in _BLOCKS:
            if name.startswith("MaxPool"):
                self.add_module(name, MaxPool3dSame(*cfg))
            else:
                block = InceptionBlock(channels, cfg, conv)
                self.add_module(name, block)
                channels = block.out_channels
        self.num_features = channels
        self.spec = finalize_spec(spec, self)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"pool": (N, τ, 1024)}``: Mixed_5c averaged over space per temporal step."""
        check_input(self, x)
        for module in self.children():
            x = module(x)
        return {"pool": x.mean(dim=(3, 4)).transpose(1, 2)}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_features(x)

    def fused(self) -> FusedInceptionI3D:
        """The same network for inference only, BatchNorm folded (:class:`FusedInceptionI3D`)."""
        return FusedInceptionI3D(self)


@torch.no_grad()
def _folded(unit: Unit3D) -> tuple[Tensor, Tensor]:
    """(weight, bias) of ``unit``'s convolution with its BatchNorm's running statistics folded in."""
    bn = unit.bn
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = unit.conv3d.weight * scale.view(-1, 1, 1, 1, 1)
    return weight, bn.bias - bn.running_mean * scale


def _conv3d(x: Tensor, weight: Tensor, bias: Tensor, stride: Triple, padding: list[int]) -> Tensor:
    """``F.conv3d``, on a float32 CPU tensor always through oneDNN.

    PyTorch sends a batch-1 convolution to its im2col fallback when the kernel is 1×1 in
    space on one thread or the input is small (a heuristic for 2D images); for these 3D
    activations that fallback also copies the channels-last input. Measured on one thread
    on a 64×224×224 clip, oneDNN for every convolution took the forward pass from 3.3-3.6
    to 2.3-2.4 CPU seconds. Under autocast the dtype is autocast's business, so F.conv3d.
    """
    if (x.device.type == "cpu" and x.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and not torch.is_autocast_enabled("cpu")):
        return torch.mkldnn_convolution(x, weight, bias, padding, list(stride), [1, 1, 1], 1)
    return F.conv3d(x, weight, bias, stride, padding)


def _same_conv(x: Tensor, weight: Tensor, bias: Tensor, kernel: Triple, stride: Triple) -> Tensor:
    """conv3d + ReLU with "SAME" padding, passed to the convolution itself when it is symmetric
    (every stride-1 unit), so no padded copy of the activation is made."""
    pads = [same_padding(size, k, s) for size, k, s in zip(x.shape[2:], kernel, stride)]
    if all(front == back for front, back in pads):
        return F.relu_(_conv3d(x, weight, bias, stride, [front for front, _ in pads]))
    return F.relu_(_conv3d(_pad_same(x, kernel, stride), weight, bias, stride, [0, 0, 0]))


def _same_max_pool(x: Tensor, kernel: Triple, stride: Triple) -> Tensor:
    """:class:`MaxPool3dSame` without a padded copy of the activation where the pool can pad.

    Symmetric padding is the pool's own, padding at the back only is ``ceil_mode`` (the last
    window reaches past the end); the pool's -inf border and the reference's zeros pick the
    same maximum, since inputs follow a ReLU and every window holds one of them.
    """
    pads = [same_padding(size, k, s) for size, k, s in zip(x.shape[2:], kernel, stride)]
    if all(front == back for front, back in pads):
        return F.max_pool3d(x, kernel, stride, [front for front, _ in pads])
    if all(front == 0 for front, _ in pads):
        pooled = F.max_pool3d(x, kernel, stride, ceil_mode=True)
        if all(out == -(-size // s) for out, size, s in zip(pooled.shape[2:], x.shape[2:], stride)):
            return pooled
    return F.max_pool3d(_pad_same(x, kernel, stride), kernel, stride)


class _FusedUnit(nn.Module):
    """A :class:`Unit3D` with its BatchNorm folded into the convolution's weight and bias."""

    def __init__(self, weight: Tensor, bias: Tensor, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.contiguous(memory_format=torch.channels_last_3d), requires_grad=False)
        self.bias = nn.Parameter(bias.clone(), requires_grad=False)
        self.kernel = kernel
        self.stride = stride

    @classmethod
    def of(cls, unit: Unit3D) -> _FusedUnit:
        return cls(*_folded(unit), unit.kernel, unit.stride)

    def forward(self, x: Tensor) -> Tensor:
        return _same_conv(x, self.weight, self.bias, self.kernel, self.stride)


def _fused_conv(module: nn.Module) -> nn.Module:
    """The fused form of an Inception block's 3×3×3 unit, full or separable."""
    if isinstance(module, SeparableUnit3D):
        return nn.Sequential(_FusedUnit.of(module.spatial), _FusedUnit.of(module.temporal))
    return _FusedUnit.of(module)


class _FusedInceptionBlock(nn.Module):
    """An :class:`InceptionBlock` whose three 1×1×1 units reading the block's input are one
    convolution (their weights stacked), so the input is read once by one wider GEMM."""

    def __init__(self, block: InceptionBlock) -> None:
        super().__init__()
        units = (block.b0, block.b1a, block.b2a)
        folded = [_folded(unit) for unit in units]
        self.widths = [unit.conv3d.out_channels for unit in units]
        self.entry = _FusedUnit(torch.cat([w for w, _ in folded]), torch.cat([b for _, b in folded]), (1, 1, 1),
                                (1, 1, 1))  # fmt: skip
        self.b1b = _fused_conv(block.b1b)
        self.b2b = _fused_conv(block.b2b)
        self.b3b = _FusedUnit.of(block.b3b)

    def forward(self, x: Tensor) -> Tensor:
        b0, b1, b2 = self.entry(x).split(self.widths, dim=1)
        b3 = self.b3b(_same_max_pool(x, (3, 3, 3), (1, 1, 1)))
        return torch.cat([b0, self.b1b(b1), self.b2b(b2), b3], dim=1)


class _FusedMaxPool(nn.Module):
    def __init__(self, pool: MaxPool3dSame) -> None:
        super().__init__()
        self.kernel = pool.kernel
        self.stride = pool.stride

    def forward(self, x: Tensor) -> Tensor:
        return _same_max_pool(x, self.kernel, self.stride)


class FusedInceptionI3D(nn.Module):
    """:class:`InceptionI3D` for inference: the same ``forward_features`` up to float rounding.

    Measured on a 64×224×224 clip on CPU, the reference spends as much time outside its
    convolutions as in them: BatchNorm and ReLU passes over large activations, a padded copy
    before every convolution, and three 1×1×1 convolutions reading the same block input.
    Here BatchNorm's running statistics are folded into each convolution, ReLU runs in
    place, symmetric "SAME" padding is left to the convolution or pool (back-only padding of
    a pool to ``ceil_mode``), the three 1×1×1 units of each block are one convolution, every
    float32 CPU convolution runs in oneDNN (:func:`_conv3d`), and activations are
    channels-last (``channels_last_3d``), the layout oneDNN's 3D convolutions and pools run
    in without reordering. Outputs are the reference's to float32 rounding (tested), so a feature
    cache extracted either way is the same cache.
    """

    def __init__(self, reference: InceptionI3D) -> None:
        super().__init__()
        self.spec = reference.spec
        self.num_features = reference.num_features
        layers: list[nn.Module] = []
        for module in reference.children():
            if isinstance(module, Unit3D):
                layers.append(_FusedUnit.of(module))
            elif isinstance(module, MaxPool3dSame):
                layers.append(_FusedMaxPool(module))
            else:
                layers.append(_FusedInceptionBlock(module))
        self.layers = nn.Sequential(*layers)
        self.eval()

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"pool": (N, τ, 1024)}``, as :meth:`InceptionI3D.forward_features`."""
        check_input(self, x)
        x = self.layers(x.contiguous(memory_format=torch.channels_last_3d))
        return {"pool": x.mean(dim=(3, 4)).transpose(1, 2)}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_features(x)


def li3d_from_i3d(i3d_state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Convert an I3D state dict (pytorch-i3d layout) into an LI3D state dict.

    Each Inception 3×3×3 kernel ``W`` becomes a spatial kernel ``Σ_t W[:, :, t]`` that keeps
    I3D's BatchNorm, and a temporal kernel that is the identity (centre tap 1) followed by an
    identity BatchNorm (γ=1, β=0, mean 0, var 1−eps). Then ReLU∘BN_id∘id∘ReLU = ReLU, so on
    a temporally constant input, away from the clip ends where "SAME" zero padding makes the
    temporal sum differ, the unit computes exactly what the I3D unit computes.
    """
    out: dict[str, Tensor] = {}
    for key, value in i3d_state.items():
        parts = key.split(".", 2)
        if not (len(parts) == 3 and parts[0].startswith("Mixed_") and parts[1] in ("b1b", "b2b")):
            out[key] = value
            continue
        prefix, tail = f"{parts[0]}.{parts[1]}", parts[2]
        if tail != "conv3d.weight":
            out[f"{prefix}.spatial.{tail}"] = value
            continue
        width = value.shape[0]
        temporal = torch.zeros(width, width, 3, 1, 1, dtype=value.dtype)
        temporal[:, :, 1, 0, 0] = torch.eye(width, dtype=value.dtype)
        out[f"{prefix}.spatial.conv3d.weight"] = value.sum(dim=2, keepdim=True)
        out[f"{prefix}.temporal.conv3d.weight"] = temporal
        out[f"{prefix}.temporal.bn.weight"] = torch.ones(width, dtype=value.dtype)
        out[f"{prefix}.temporal.bn.bias"] = torch.zeros(width, dtype=value.dtype)
        out[f"{prefix}.temporal.bn.running_mean"] = torch.zeros(width, dtype=value.dtype)
        out[f"{prefix}.temporal.bn.running_var"] = torch.full((width,), 1.0 - _BN_EPS, dtype=value.dtype)
        out[f"{prefix}.temporal.bn.num_batches_tracked"] = torch.tensor(0)
    return out


def _li3d_filter(state: dict[str, Tensor], model: nn.Module) -> dict[str, Tensor]:
    """LI3D checkpoints load as they are; I3D ones are converted with :func:`li3d_from_i3d`."""
    if "Mixed_3b.b1b.conv3d.weight" in state:
        state = li3d_from_i3d(state)
    return adapt_first_conv(state, model)


def _i3d_shapes(input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    _, frames, _, _ = input_shape
    return {"pool": (math.ceil(frames / 8), 1024)}


def _inception3d(
    name: str, stream: str, conv: ConvMaker, checkpoint_filter: CheckpointFilter, layout: str
) -> InceptionI3D:
    spec = BackboneSpec(
        name=name,
        stream=stream,
        input_kind="clip",
        in_channels=3 if stream == "rgb" else 2,
        clip_length=64,
        input_size=(224, 224),
        mean=(0.5,) * (3 if stream == "rgb" else 2),
        std=(0.5,) * (3 if stream == "rgb" else 2),
        layers=("pool",),
        shape_fn=_i3d_shapes,
        checkpoint_layout=layout,
        first_conv="Conv3d_1a_7x7.conv3d.weight",
        head_keys=("logits.",),
        checkpoint_filter=checkpoint_filter,
    )
    return InceptionI3D(spec, conv)


@register_backbone("i3d")
def i3d(*, stream: str = "rgb") -> InceptionI3D:
    """I3D (pytorch-i3d ``InceptionI3d`` layout, ``rgb_imagenet.pt`` / ``flow_imagenet.pt``)."""
    return _inception3d("i3d", stream, conv3x3x3, adapt_first_conv, "pytorch-i3d InceptionI3d")


@register_backbone("li3d")
def li3d(*, stream: str = "rgb") -> InceptionI3D:
    """LI3D: I3D with separable Inception convs; also accepts I3D checkpoints (converted)."""
    return _inception3d(
        "li3d", stream, SeparableUnit3D, _li3d_filter, "vpipe LI3D, or pytorch-i3d InceptionI3d (converted)"
    )
