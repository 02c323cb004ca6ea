"""One training step of the default head, with the fused AdamW update against the foreach one.

The trainer's step (forward, cross-entropy, backward, gradient clipping at 5, AdamW with
weight decay 1e-2) on ``bilstm-softagg`` at its defaults (BiLSTM 256 per direction, soft
BoF / FV / VLAD at K = 128 averaged, 101 classes: 28.2 M parameters), on a batch of 32
videos × 8 steps × 1024 (li3d pooled clips), the shape of a UCF101 epoch's batches.
Both optimisers run in the same process, alternating, so the ratio holds while the
machine's speed varies; the update alone is timed too. An epoch at 13,320 videos is
255 such steps (8,146 fit videos / 32).

    python bench/train_step.py --steps 20 --out bench/results/train_step.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model, emit_result, load_average
from vpipe.models.heads import create_head
from vpipe.models.heads.registry import HeadBatch

STEPS_PER_UCF101_EPOCH = 8_146 // 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    head = create_head("bilstm-softagg", {"x": (1024,)}, 101)
    batch = HeadBatch({"x": torch.randn(32, 8, 1024)}, {"x": torch.full((32,), 8)}, torch.randint(0, 101, (32,)))
    optimisers = {
        "foreach": torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-2, foreach=True),
        "fused": torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-2, fused=True),
    }
    step_s: dict[str, list[float]] = {name: [] for name in optimisers}
    update_s: dict[str, list[float]] = {name: [] for name in optimisers}
    for step in range(args.steps + 1):
        for name, optimiser in optimisers.items():
            started = time.perf_counter()
            loss = F.cross_entropy(head(batch), batch.labels)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 5.0)
            before_update = time.perf_counter()
            optimiser.step()
            done = time.perf_counter()
            if step:  # the first step allocates the optimiser state
                step_s[name].append(done - started)
                update_s[name].append(done - before_update)
    median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    result = {
        "machine": {"cpu": cpu_model(), "threads": args.threads, "load_average": load_average()},
        "parameters": sum(p.numel() for p in head.parameters()),
        "steps": args.steps,
        "median_step_s": {name: median(xs) for name, xs in step_s.items()},
        "median_update_s": {name: median(xs) for name, xs in update_s.items()},
    }
    result["step_ratio_fused_over_foreach"] = result["median_step_s"]["fused"] / result["median_step_s"]["foreach"]
    result["update_ratio_fused_over_foreach"] = result["median_update_s"]["fused"] / result["median_update_s"]["foreach"]
    result["ucf101_epoch_s_estimate"] = {n: s * STEPS_PER_UCF101_EPOCH for n, s in result["median_step_s"].items()}
    emit_result(result, args.out)


if __name__ == "__main__":
    main()
