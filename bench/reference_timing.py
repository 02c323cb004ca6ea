"""Shared by the benchmarks that time a vpipe backbone against its ``transformers`` reference.

Both models hold the same random weights: the reference's state dict is saved as
``model.safetensors`` and loaded into vpipe's module through its layout conversion, so
the comparison also checks the conversion (``max_abs_diff``). The timed phases alternate,
``repeats`` times each after one warm-up, and the best time of each counts (every sample
is kept): on a shared machine the ratio is steadier than either time. ``ratio`` =
reference time / vpipe time (> 1: vpipe is faster).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from vpipe.models.weights import load_weights


def load_reference_weights(ours: torch.nn.Module, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """Load the reference's ``state`` into ``ours`` through a safetensors file, strictly."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
        load_weights(ours, path, strict=True)
    return ours.eval()


def compare(
    model: str,
    input_shape: list[int],
    run_ours: Callable[[], torch.Tensor],
    run_reference: Callable[[], torch.Tensor],
    *,
    repeats: int,
    per: int,
    unit: str,
) -> dict:
    """Time both (alternating, best of ``repeats`` per ``unit``, ``per`` units a call) and compare outputs."""
    samples: dict[str, list[float]] = {"vpipe": [], "transformers": []}
    with torch.inference_mode():
        diff = (run_ours() - run_reference()).abs().max().item()  # also the warm-up
        for _ in range(repeats):
            for name, fn in (("vpipe", run_ours), ("transformers", run_reference)):
                start = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - start) / per)
    best = {name: min(times) for name, times in samples.items()}
    return {
        "model": model,
        "input": input_shape,
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
        f"seconds_per_{unit}": best,
        "samples": samples,
        "ratio": best["transformers"] / best["vpipe"],
        "max_abs_diff": diff,
        "loadavg": os.getloadavg(),
    }


def write_report(report: dict, out: Path, unit: str) -> None:
    """Write the JSON and print one line."""
    out.write_text(json.dumps(report, indent=2))
    best = report[f"seconds_per_{unit}"]
    print(
        f"{report['model']}: vpipe {best['vpipe'] * 1e3:.1f} ms/{unit}, transformers {best['transformers'] * 1e3:.1f} "
        f"ms/{unit}, ratio {report['ratio']:.2f}, max |diff| {report['max_abs_diff']:.2e}"
    )
