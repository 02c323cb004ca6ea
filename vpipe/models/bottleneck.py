"""The ResNet bottleneck block in 2D and 3D, shared by the per-frame and the 3D ResNets.

Both reference layouts (torchvision's ``ResNet`` v1.5 and kenshohara's 3D-ResNets with
shortcut "B") name the block's modules the same way — ``conv1 bn1 conv2 bn2 conv3 bn3``
and ``downsample.0/1`` — and put the stride on the 3×3(×3) conv, so one block written for
either dimension loads both families' checkpoints strictly.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

Dims = Literal[2, 3]

_CONV: dict[int, type[nn.Module]] = {2: nn.Conv2d, 3: nn.Conv3d}
_NORM: dict[int, type[nn.Module]] = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL: dict[int, type[nn.Module]] = {2: nn.MaxPool2d, 3: nn.MaxPool3d}


class Bottleneck(nn.Module):
    """1×1 reduce, 3×3 (strided), 1×1 expand ×4, plus the (projected) shortcut; ``dims`` 2 or 3."""

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: int = 1, *, dims: Dims = 2) -> None:
        super().__init__()
        conv, norm = _CONV[dims], _NORM[dims]
        out_channels = width * self.expansion
        self.conv1 = conv(in_channels, width, 1, bias=False)
        self.bn1 = norm(width)
        self.conv2 = conv(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(width)
        self.conv3 = conv(width, out_channels, 1, bias=False)
        self.bn3 = norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(conv(in_channels, out_channels, 1, stride=stride, bias=False), norm(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


def bottleneck_stage(in_channels: int, width: int, blocks: int, stride: int, *, dims: Dims = 2) -> nn.Sequential:
    """One ResNet stage (``layerN``): the first block changes width and stride, the rest keep them."""
    layers = [Bottleneck(in_channels, width, stride, dims=dims)]
    layers += [Bottleneck(width * Bottleneck.expansion, width, dims=dims) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def bottleneck_layers(depths: tuple[int, int, int, int], *, dims: Dims = 2) -> tuple[nn.Sequential, ...]:
    """``layer1``–``layer4`` of a bottleneck ResNet after the 64-channel stem: widths 64–512,
    stride 2 from ``layer2`` on; ``depths`` is (3, 4, 6, 3) for ResNet-50, (3, 4, 23, 3) for 101."""
    widths, strides = (64, 128, 256, 512), (1, 2, 2, 2)
    in_channels = (64, *(w * Bottleneck.expansion for w in widths[:-1]))
    return tuple(
        bottleneck_stage(c, w, d, s, dims=dims) for c, w, d, s in zip(in_channels, widths, depths, strides, strict=True)
    )


def build_trunk(net: nn.Module, in_channels: int, depths: tuple[int, int, int, int], *, dims: Dims, stride: int | tuple) -> None:
    """Give ``net`` a bottleneck ResNet's stem (a 7×7(×7) conv with ``stride``, batch norm,
    ReLU, 3×3(×3) max pool) and ``layer1``–``layer4``, under the reference layouts' names and
    in their order, so checkpoints load by key; ``net.num_features`` is the pooled width."""
    net.conv1 = _CONV[dims](in_channels, 64, 7, stride=stride, padding=3, bias=False)
    net.bn1 = _NORM[dims](64)
    net.relu = nn.ReLU(inplace=True)
    net.maxpool = _POOL[dims](3, stride=2, padding=1)
    net.layer1, net.layer2, net.layer3, net.layer4 = bottleneck_layers(depths, dims=dims)
    net.num_features = 512 * Bottleneck.expansion
