"""3D ResNet-50 (Hara et al.), the ST-MANet baseline (st-manet-multilevel-aggregation.md §3.1).

Module names and shapes follow ``models/resnet.py`` of kenshohara/3D-ResNets-PyTorch in
its 2020 generation (``r3d50_K_200ep.pth`` and siblings: ``generate_model(50)`` with the
defaults ``conv1_t_size=7``, ``conv1_t_stride=1``, shortcut "B"). The CVPR 2018
``resnet-50-kinetics.pth`` has the same keys and shapes (its 7×7×7 conv1 has the same
(1, 2, 2) stride) behind a ``module.`` prefix, which loading strips. The classifier
``fc`` (700–1139 classes depending on the pretraining set) is dropped.

Stage 1 is conv1 (stride 1 in time, 2 in space) + max pool (stride 2 everywhere); stages
2–5 are ``layer1``–``layer4``. Inputs are [0, 1] pixels normalised with the repository's
Kinetics mean/std; the flow stream takes 2 channels and, as there, the first two of them.

Cached per clip: each stage's map with its own temporal length kept and space average
pooled to ``grid`` cells, plus ``pool`` (2048, the global average of stage 5). The
``st-manet`` head reads the four maps. The grid is 4×4 at every stage because

* at ST-MANet's input (32 frames of 112², §4.1) stage 5 *is* 4×4, so the deepest map is
  stored exactly and the shallower ones are pooled to it (stage 2 by 7×7, stage 3 by
  3.5×3.5, stage 4 by 1.75×1.75, adaptively);
* equal grids give the spatial attention maps of all stages one size, so the
  downsampling of ST-MANet's eq. 6 is needed only in time;
* it keeps a clip under 1 MB in float16. At 32×112² the maps are (256, 16, 4, 4),
  (512, 8, 4, 4), (1024, 4, 4, 4) and (2048, 2, 4, 4): 65,536 values each, 262,144 with
  ``pool`` 264,192, i.e. **528,384 bytes (516 KiB) per clip**; a 16-frame clip takes half.
  Unpooled maps would take 8.6 MB per clip (stage 2 alone 256 × 16 × 28 × 28).

On disk with the dense test windows (64 frames every 64, subsampled to 32): UCF101,
13,320 videos of 7.2 s at 25 fps, is ~3 windows a video, ≈ 40k clips ≈ 21 GB; Kinetics-400
(~266k train + val videos of 10 s, ~300 frames) ≈ 5 windows a video ≈ 1.3M clips ≈ 0.7 TB.
Each extra cached train view adds the train split's share again. ``grid`` is a builder
option (``vpipe extract -o grid=[2,2]`` quarters the maps).
"""

from __future__ import annotations

import functools
import math

import torch.nn.functional as F
from torch import Tensor, nn

from vpipe.models.backbones.registry import BackboneSpec, check_input, finalize_spec, register_backbone
from vpipe.models.bottleneck import build_trunk
from vpipe.models.weights import adapt_first_conv

KINETICS_MEAN = (0.4345, 0.4051, 0.3775)
KINETICS_STD = (0.2768, 0.2713, 0.2737)
STAGES = ("layer1", "layer2", "layer3", "layer4")
#: Cells each stage map is pooled to (see the module docstring).
GRID = (4, 4)


class ResNet3D(nn.Module):
    """Bottleneck 3D ResNet without its classifier; caches every stage on a small grid."""

    def __init__(self, spec: BackboneSpec, depths: tuple[int, int, int, int], grid: tuple[int, int]) -> None:
        super().__init__()
        build_trunk(self, spec.in_channels, depths, dims=3, stride=(1, 2, 2))
        self.grid = grid
        self.spec = finalize_spec(spec, self)

    def forward_features(self, x: Tensor) -> dict[str, Tensor]:
        """Stage maps (N, C_i, T_i, *grid) for ``layer1``..``layer4`` and ``pool`` (N, 2048)."""
        check_input(self, x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features: dict[str, Tensor] = {}
        for name in STAGES:
            x = getattr(self, name)(x)
            features[name] = F.adaptive_avg_pool3d(x, (x.shape[2], *self.grid))
        features["pool"] = x.mean(dim=(2, 3, 4))
        return features

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.forward_features(x)


def stage_shapes(input_shape: tuple[int, ...], grid: tuple[int, int] = GRID) -> dict[str, tuple[int, ...]]:
    """Cached shapes for a (C, T, H, W) clip: stage maps (C_i, T_i, *grid) and ``pool``.

    Time halves in the stage-1 max pool and in stages 3–5 (stride 2, padding 1: ceil).
    """
    frames = math.ceil(input_shape[1] / 2)
    out: dict[str, tuple[int, ...]] = {}
    for i, name in enumerate(STAGES):
        if i > 0:
            frames = math.ceil(frames / 2)
        out[name] = (256 * 2**i, frames, *grid)
    out["pool"] = (2048,)
    return out


@register_backbone("r3d50")
def r3d50(*, stream: str = "rgb", grid: tuple[int, int] = GRID) -> ResNet3D:
    """3D ResNet-50 (3D-ResNets-PyTorch ``r3d50_*_200ep.pth`` layout); ``grid`` pools stage maps."""
    channels = 3 if stream == "rgb" else 2
    spec = BackboneSpec(
        name="r3d50",
        stream=stream,
        input_kind="clip",
        in_channels=channels,
        clip_length=16,
        input_size=(112, 112),
        mean=KINETICS_MEAN[:channels],
        std=KINETICS_STD[:channels],
        layers=(*STAGES, "pool"),
        shape_fn=functools.partial(stage_shapes, grid=tuple(grid)),
        checkpoint_layout="3D-ResNets-PyTorch generate_model(50)",
        first_conv="conv1.weight",
        head_keys=("fc.",),
        checkpoint_filter=adapt_first_conv,
    )
    return ResNet3D(spec, (3, 4, 6, 3), tuple(grid))
