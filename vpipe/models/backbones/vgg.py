"""VGG-16 for both streams of the deep-fusion network (two-stream-deep-fusion-ln-lstm.md §3.1, §3.6).

Module names follow torchvision's ``VGG`` (``features.0`` … ``features.28`` convs,
``classifier.0`` = fc6), so ``vgg16-*.pth`` loads strictly after dropping fc7/fc8
(``classifier.3``, ``classifier.6``), which the cache never uses.

Cached layers: ``conv5_3`` after its ReLU (the paper fuses the streams there) and ``fc6``
after its ReLU (4096; dropout is a training-time op and does not apply here). By default
``conv5_3`` is the native map, 512 × 14 × 14 at 224 pixels, the input of the paper's
fusion conv (§3.6: X_conv is 512 × 14 × 14). In float16 that is 200,704 bytes per frame
and stream: with T = 17 frames, 6.8 MB per video for rgb + flow (7.1 MB with both streams'
fc6 rows), about 95 GB for UCF101's 13,320 videos per cached view. ``grid`` average-pools
the map for users short of disk: ``grid=(7, 7)`` (``-o grid=[7,7]``) stores a quarter of
the map (2.0 MB per video with fc6, 27 GB for UCF101) at the price of a coarser fusion
and attention grid, a deviation from the paper (docs/deep-fusion.md).

The temporal stream takes L stacked flow fields as 2L channels (the paper uses L = 4).
The paper initialises its first conv randomly; loading an RGB checkpoint here instead
averages the RGB filters and replicates them over the 2L channels (TSN cross-modality
initialisation), which starts the flow stream from ImageNet edges rather than noise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vpipe.errors import ConfigError
from vpipe.models.backbones.registry import BackboneSpec, check_input, finalize_spec, frame_inputs, register_backbone
from vpipe.models.weights import adapt_first_conv

VGG16_LAYOUT: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"
)


def make_features(in_channels: int, layout: tuple[int | str, ...]) -> nn.Sequential:
    """3×3 conv + ReLU per number and 2×2 max pool per "M", indexed as torchvision does."""
    layers: list[nn.Module] = []
    for item in layout:
        if item == "M":
            layers.append(nn.MaxPool2d(2, stride=2))
        else:
            layers += [nn.Conv2d(in_channels, int(item), 3, padding=1), nn.ReLU(inplace=True)]
            in_channels = int(item)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG convolutional trunk plus fc6; caches conv5_3 and fc6."""

    def __init__(self, spec: BackboneSpec, layout: tuple[int | str, ...], grid: tuple[int, int] | None) -> None:
        super().__init__()
        self.features = make_features(spec.in_channels, layout)
        self.classifier = nn.Sequential(nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True))
        self.grid = grid
        self.num_features = 4096
        self.spec = finalize_spec(spec, self)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """``{"conv5_3": (N, 512, *grid), "fc6": (N, 4096)}`` for frames (N, C, H, W)."""
        check_input(self, x)
        *trunk, pool5 = self.features
        for layer in trunk:
            x = layer(x)
        conv = x if self.grid is None else F.adaptive_avg_pool2d(x, self.grid)
        fc6 = self.classifier(torch.flatten(F.adaptive_avg_pool2d(pool5(x), (7, 7)), 1))
        return {"conv5_3": conv, "fc6": fc6}

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_features(x)


def _grid(grid: int | tuple[int, int] | list[int] | None) -> tuple[int, int] | None:
    """``grid`` as (rows, cols): one int means a square grid; None keeps the native map.

    The command line gives ``-o grid=7`` or ``-o grid=[7,7]`` (a list); anything else is a
    :class:`ConfigError`, since a bad grid would only fail deep inside the first batch.
    """
    if grid is None:
        return None
    cells = (grid, grid) if isinstance(grid, int) else tuple(grid)
    if len(cells) != 2 or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in cells):
        raise ConfigError(f"vgg16: grid must be a positive int or [rows, cols] (or null for 14×14), got {grid!r}")
    return (int(cells[0]), int(cells[1]))


def _shape_fn(grid: tuple[int, int] | None):
    def shapes(input_shape: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
        _, height, width = input_shape
        cells = grid or (height // 16, width // 16)
        return {"conv5_3": (512, *cells), "fc6": (4096,)}

    return shapes


@register_backbone("vgg16")
def vgg16(*, stream: str = "rgb", grid: int | tuple[int, int] | None = None, flow_stack: int = 4) -> VGG:
    """VGG-16 (torchvision layout); ``grid`` pools conv5_3 (None: native 14×14), ``flow_stack`` = L flow fields."""
    grid = _grid(grid)
    spec = BackboneSpec(
        name="vgg16",
        stream=stream,
        **frame_inputs("vgg16", stream, flow_stack),
        layers=("conv5_3", "fc6"),
        shape_fn=_shape_fn(grid),
        checkpoint_layout="torchvision VGG",
        first_conv="features.0.weight",
        head_keys=("classifier.3.", "classifier.6."),
        checkpoint_filter=adapt_first_conv,
    )
    return VGG(spec, VGG16_LAYOUT, grid)
