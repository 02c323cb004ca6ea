"""2D ResNet-50/101 applied per frame (vcm-sdd-detail-attention-fusion.md §3.1, §4.1).

Module names follow torchvision's ``ResNet`` (v1.5: the stride sits on the 3×3 conv), so
``resnet50-*.pth`` / ``resnet101-*.pth`` load strictly; the 1000-way ``fc`` is dropped.
Cached layers: ``pool`` (2048) and ``grid``, the last conv map (2048, h, w), average
pooled to ``grid`` cells when one is given (the paper's n×n grid features).

The flow stream takes a stack of L flow fields as 2L channels (TSN); its mean/std are
TSN's for flow (0.5 and the mean ImageNet std) and an RGB checkpoint's first conv is
adapted by cross-modality initialisation.

Cache size of ``grid`` (float16, 2048 × 7 × 7 at 224²): 200,704 B per frame and stream.
The vcm-sdd protocol (``tsn`` plan, n segments × 6 frames, rgb and flow) stores
2 · 6n frames per video: 19.3 MB at n = 8 and 38.5 MB at n = 16, so UCF101's 13,320
videos take 257 GB and 514 GB per cached view. ``grid=(g, g)`` pools it to g² cells.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from vpipe.models.backbones.registry import BackboneSpec, check_input, finalize_spec, frame_inputs, register_backbone
from vpipe.models.bottleneck import build_trunk
from vpipe.models.weights import adapt_first_conv



class ResNet2D(nn.Module):
    """Bottleneck ResNet without its classifier; ``forward_features`` caches pool and grid."""

    def __init__(self, spec: BackboneSpec, depths: tuple[int, int, int, int], grid: tuple[int, int] | None) -> None:
        super().__init__()
        build_trunk(self, spec.in_channels, depths, dims=2, stride=2)
        self.grid = grid
        self.spec = finalize_spec(spec, self)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"pool": (N, 2048), "grid": (N, 2048, h, w)}`` for frames (N, C, H, W)."""
        check_input(self, x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        grid = x if self.grid is None else F.adaptive_avg_pool2d(x, self.grid)
        return {"pool": x.mean(dim=(2, 3)), "grid": grid}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_features(x)


def _shape_fn(grid: tuple[int, int] | None):
    def shapes(input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        _, height, width = input_shape
        cells = grid or (_downsampled(height), _downsampled(width))
        return {"pool": (2048,), "grid": (2048, *cells)}

    return shapes


def _downsampled(size: int) -> int:
    """Output size after the stem and three stride-2 stages: five halvings, rounding up."""
    for _ in range(5):
        size = math.ceil(size / 2)
    return size


def _resnet(
    name: str, depths: tuple[int, int, int, int], stream: str, grid: tuple[int, int] | None, flow_stack: int
) -> ResNet2D:
    spec = BackboneSpec(
        name=name,
        stream=stream,
        **frame_inputs(name, stream, flow_stack),
        layers=("pool", "grid"),
        shape_fn=_shape_fn(grid),
        checkpoint_layout="torchvision ResNet",
        first_conv="conv1.weight",
        head_keys=("fc.",),
        checkpoint_filter=adapt_first_conv,
    )
    return ResNet2D(spec, depths, grid)


@register_backbone("resnet50")
def resnet50(*, stream: str = "rgb", grid: tuple[int, int] | None = None, flow_stack: int = 5) -> ResNet2D:
    """ResNet-50 per frame; ``grid`` pools the last conv map, ``flow_stack`` = L (TSN: 5)."""
    return _resnet("resnet50", (3, 4, 6, 3), stream, grid, flow_stack)


@register_backbone("resnet101")
def resnet101(*, stream: str = "rgb", grid: tuple[int, int] | None = None, flow_stack: int = 5) -> ResNet2D:
    """ResNet-101 per frame, the vcm-sdd backbone; options as :func:`resnet50`."""
    return _resnet("resnet101", (3, 4, 23, 3), stream, grid, flow_stack)
