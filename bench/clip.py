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
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from vpipe.models.backbones import clip as cl
from vpipe.models.weights import load_weights


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
    ours = cl.clip(size=size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
        load_weights(ours, path, strict=True)
    return reference, ours.eval()


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

    samples: dict[str, list[float]] = {"vpipe": [], "transformers": []}
    with torch.inference_mode():
        diff = (run_ours() - run_reference()).abs().max().item()  # also the warm-up
        for _ in range(args.repeats):
            for name, fn in (("vpipe", run_ours), ("transformers", run_reference)):
                start = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - start) / args.frames)
    best = {name: min(times) for name, times in samples.items()}
    report = {
        "model": f"clip-{args.size}",
        "input": [args.frames, 3, image, image],
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "seconds_per_frame": best,
        "samples": samples,
        "ratio": best["transformers"] / best["vpipe"],
        "max_abs_diff": diff,
        "loadavg": os.getloadavg(),
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(
        f"clip-{args.size}: vpipe {best['vpipe'] * 1e3:.1f} ms/frame, transformers {best['transformers'] * 1e3:.1f} "
        f"ms/frame, ratio {report['ratio']:.2f}, max |diff| {diff:.2e}"
    )


if __name__ == "__main__":
    main()
