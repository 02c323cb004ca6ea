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

    python bench/vjepa.py [--size large|huge] [--batch 1] [--repeats 2] [--out FILE]
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

from vpipe.models.backbones import vjepa as vj
from vpipe.models.weights import load_weights


def build(size: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The reference model and vpipe's module with the same random weights."""
    import transformers

    width, depth, heads = vj.SIZES[size]
    config = transformers.VJEPA2Config(
        crop_size=224, frames_per_clip=16, hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads,
        pred_num_hidden_layers=1, num_pooler_layers=1,
    )
    torch.manual_seed(0)
    reference = transformers.VJEPA2Model(config).eval()
    ours = vj.vjepa(size=size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
        load_weights(ours, path, strict=True)
    return reference, ours.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="large", choices=sorted(vj.SIZES))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench/vjepa.json"))
    args = parser.parse_args()

    reference, ours = build(args.size)
    x = torch.randn(args.batch, 3, 16, 224, 224, generator=torch.Generator().manual_seed(1))

    def run_reference() -> torch.Tensor:
        out = reference(pixel_values_videos=x.transpose(1, 2), skip_predictor=True)
        return out.last_hidden_state.mean(1)

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
        "model": f"vjepa2-{args.size}",
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
        f"vjepa2-{args.size}: vpipe {best['vpipe']:.2f} s/clip, transformers {best['transformers']:.2f} s/clip, "
        f"ratio {report['ratio']:.2f}, max |diff| {diff:.2e}"
    )


if __name__ == "__main__":
    main()
