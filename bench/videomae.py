"""Benchmark: VideoMAE clip rate, vpipe's module against ``transformers``' VideoMAEModel.

Both models hold the same random weights (the ``transformers`` model's state dict, saved
as ``model.safetensors`` and loaded into vpipe's module through its layout conversion)
and see the same clips at the default input, 3 × 16 × 224 × 224, float32 on CPU, under
``torch.inference_mode``. The reference's feature is its last hidden state mean-pooled
through the same ``fc_norm`` (that is what VideoMAEForVideoClassification feeds its
classifier), so the run also reports the largest absolute difference between the two.
The timed phases alternate, ``--repeats`` times each after one warm-up, and the best time
per clip of each counts (every sample is kept in the JSON): on a shared machine the
ratio is steadier than either time. ``ratio`` = reference time / vpipe time (> 1: vpipe
is faster). Needs ``transformers`` (the test extra).

    python bench/videomae.py [--size small|base|large] [--batch 1] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from reference_timing import compare, load_reference_weights, write_report  # bench/, beside this script
from vpipe.models.backbones import videomae as vm


def build(size: str) -> tuple[torch.nn.Module, torch.nn.Module, torch.Tensor]:
    """The reference model, vpipe's module with the same weights, and the fc_norm affine."""
    import transformers

    width, depth, heads = vm.SIZES[size]
    config = transformers.VideoMAEConfig(
        hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
        intermediate_size=4 * width, layer_norm_eps=1e-6, use_mean_pooling=True, qkv_bias=True,
    )
    torch.manual_seed(0)
    reference = transformers.VideoMAEModel(config).eval()
    fc = torch.stack([torch.ones(width), torch.zeros(width)])
    state = {**reference.state_dict(), "fc_norm.weight": fc[0], "fc_norm.bias": fc[1]}
    return reference, load_reference_weights(vm.videomae(size=size), state), fc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=sorted(vm.SIZES))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/videomae.json"))
    args = parser.parse_args()

    reference, ours, fc = build(args.size)
    x = torch.randn(args.batch, 3, 16, 224, 224, generator=torch.Generator().manual_seed(1))
    width = vm.SIZES[args.size][0]

    def run_reference() -> torch.Tensor:
        tokens = reference(pixel_values=x.transpose(1, 2)).last_hidden_state
        return F.layer_norm(tokens.mean(1), (width,), fc[0], fc[1], eps=1e-6)

    def run_ours() -> torch.Tensor:
        return ours(x)["pool"]

    report = compare(
        f"videomae-{args.size}", [args.batch, 3, 16, 224, 224], run_ours, run_reference,
        repeats=args.repeats, per=args.batch, unit="clip",
    )  # fmt: skip
    write_report(report, args.out, "clip")


if __name__ == "__main__":
    main()
