"""Benchmark: V-JEPA 2 clip rate, vpipe's module against ``transformers``' VJEPA2Model.

Both models hold the same random weights (the ``transformers`` model's state dict, saved
as ``model.safetensors`` and loaded into vpipe's module through its layout conversion)
and see the same clips at vpipe's default input, 3 × 16 × 224 × 224, float32 on CPU,
under ``torch.inference_mode``. The reference config's crop and clip length are set to
that input, since its rotary positions are computed from the configured grid. The
reference runs its encoder alone (``skip_predictor=True``) and its tokens are
mean-pooled, vpipe's ``pool``; the run reports the largest absolute difference. Timed
phases alternate, ``--repeats`` times each after one warm-up; the best time per clip of
each counts (every sample is kept in the JSON). ``ratio`` = reference time / vpipe time
(> 1: vpipe is faster). Needs ``transformers`` with V-JEPA 2 (the test extra).

``--frames`` shortens the clip (both models take it: V-JEPA 2's rotary positions follow
the grid). A ViT-L forward over 16 × 224² (1568 tokens) takes tens of seconds on two
shared cores, and the six forwards of the default run (a warm-up and two repeats each)
did not finish in ten minutes there; ``--frames 8 --repeats 1`` (784 tokens, four
forwards) does, and it times the same blocks, so the ratio still compares the two
implementations at ViT-L width and depth.

    python bench/vjepa.py [--size large|huge] [--frames 16] [--batch 1] [--repeats 2] [--out FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from reference_timing import compare, load_reference_weights, write_report  # bench/, beside this script
from vpipe.models.backbones import vjepa as vj


def build(size: str, frames: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The reference model and vpipe's module with the same random weights."""
    import transformers

    width, depth, heads = vj.SIZES[size]
    config = transformers.VJEPA2Config(
        crop_size=224, frames_per_clip=frames, hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
        pred_num_hidden_layers=1, num_pooler_layers=1,
    )
    torch.manual_seed(0)
    reference = transformers.VJEPA2Model(config).eval()
    return reference, load_reference_weights(vj.vjepa(size=size), reference.state_dict())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="large", choices=sorted(vj.SIZES))
    parser.add_argument("--frames", type=int, default=16, help="frames per clip, even")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/vjepa.json"))
    args = parser.parse_args()

    if args.frames < 2 or args.frames % vj.TUBELET:
        parser.error(f"--frames must be a positive multiple of {vj.TUBELET}, got {args.frames}")
    reference, ours = build(args.size, args.frames)
    x = torch.randn(args.batch, 3, args.frames, 224, 224, generator=torch.Generator().manual_seed(1))

    def run_reference() -> torch.Tensor:
        out = reference(pixel_values_videos=x.transpose(1, 2), skip_predictor=True)
        return out.last_hidden_state.mean(1)

    def run_ours() -> torch.Tensor:
        return ours(x)["pool"]

    report = compare(
        f"vjepa2-{args.size}", [args.batch, 3, args.frames, 224, 224], run_ours, run_reference,
        repeats=args.repeats, per=args.batch, unit="clip",
    )  # fmt: skip
    write_report(report, args.out, "clip")


if __name__ == "__main__":
    main()
