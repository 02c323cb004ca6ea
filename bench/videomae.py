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
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vpipe.models.backbones import videomae as vm
from vpipe.models.weights import load_weights


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
    ours = vm.videomae(size=size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        state = {k: v.contiguous() for k, v in reference.state_dict().items()}
        save_file({**state, "fc_norm.weight": fc[0], "fc_norm.bias": fc[1]}, str(path))
        load_weights(ours, path, strict=True)
    return reference, ours.eval(), fc


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

    samples: dict[str, list[float]] = {"vpipe": [], "transformers": []}
    with torch.inference_mode():
        diff = (run_ours() - run_reference()).abs().max().item()  # also the warm-up
        for _ in range(args.repeats):
            for name, fn in (("vpipe", run_ours), ("transformers", run_reference)):
                start = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - start) / args.batch)
    best = {name: min(times) for name, times in samples.items()}
    report = {
        "model": f"videomae-{args.size}",
        "input": [args.batch, 3, 16, 224, 224],
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        "seconds_per_clip": best,
        "samples": samples,
        "ratio": best["transformers"] / best["vpipe"],
        "max_abs_diff": diff,
        "loadavg": os.getloadavg(),
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(
        f"videomae-{args.size}: vpipe {best['vpipe']:.3f} s/clip, transformers {best['transformers']:.3f} s/clip, "
        f"ratio {report['ratio']:.2f}, max |diff| {diff:.2e}"
    )


if __name__ == "__main__":
    main()
