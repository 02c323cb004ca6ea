"""Benchmark: CLIP image tower frame rate, vpipe's module against ``transformers``' CLIPVisionModelWithProjection.

Both models hold the same random weights (the ``transformers`` model's state dict, saved
as ``model.safetensors`` and loaded into vpipe's module through its layout conversion)
and see the same frames at the size's input (224² or 336²), float32 on CPU, under
``torch.inference_mode``; a batch is the frames of one clip (``--frames``), as the extract
stage sends them. The run also reports the largest absolute difference between the two
projected embeddings. Timed phases alternate, ``--repeats`` times each after one warm-up;
the best time per frame of each counts (every sample is kept in the JSON), since on a
shared machine the ratio is steadier than either time. ``ratio`` = reference time /
vpipe time (> 1: vpipe is faster). Needs ``transformers`` (the test extra).

    python bench/clip.py [--size b32|b16|l14|l14-336] [--frames 8] [--repeats 3] [--out FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from reference_timing import compare, load_reference_weights, write_report  # bench/, beside this script
from vpipe.models.backbones import clip as cl


def build(size: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The reference model and vpipe's module with the same random weights."""
    import transformers

    width, depth, patch, image, embed = cl.SIZES[size]
    config = transformers.CLIPVisionConfig(
        hidden_size=width, intermediate_size=4 * width, num_hidden_layers=depth, num_attention_heads=width // 64,
        image_size=image, patch_size=patch, projection_dim=embed, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    torch.manual_seed(0)
    reference = transformers.CLIPVisionModelWithProjection(config).eval()
    return reference, load_reference_weights(cl.clip(size=size), reference.state_dict())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="b32", choices=sorted(cl.SIZES))
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench/clip.json"))
    args = parser.parse_args()

    reference, ours = build(args.size)
    image = cl.SIZES[args.size][3]
    x = torch.randn(args.frames, 3, image, image, generator=torch.Generator().manual_seed(1))

    def run_reference() -> torch.Tensor:
        return reference(pixel_values=x).image_embeds

    def run_ours() -> torch.Tensor:
        return ours(x)["pool"]

    report = compare(
        f"clip-{args.size}", [args.frames, 3, image, image], run_ours, run_reference,
        repeats=args.repeats, per=args.frames, unit="frame",
    )  # fmt: skip
    write_report(report, args.out, "frame")


if __name__ == "__main__":
    main()
