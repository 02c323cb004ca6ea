"""TV-L1 with converged pairs dropped from the batch against the masked batch.

Same pairs, same parameters (OpenCV's defaults), same thread count, timed in one
run: ``tvl1(..., shrink=True)`` (the default) against ``shrink=False``, where
converged pairs stay in the batch under a mask. The pairs of ``bench/flow.py``
mix motions of 1 to 10 px, so they converge at different iterations. Reports
pairs/s of both, their ratio, and the largest flow difference (it must be 0).

    python bench/flow_shrink.py --batch 8 --size 224 --out bench/results/flow_shrink.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from vpipe.flow import tvl1

from flow import make_pairs


def timed(prev: torch.Tensor, nxt: torch.Tensor, shrink: bool) -> tuple[float, torch.Tensor]:
    """Pairs/s of one batch (after one warm-up run of the first two pairs) and the flow."""
    sync = torch.cuda.synchronize if prev.is_cuda else (lambda: None)
    tvl1(prev[:2], nxt[:2], shrink=shrink)
    sync()
    start = time.perf_counter()
    flow = tvl1(prev, nxt, shrink=shrink)
    sync()
    return len(prev) / (time.perf_counter() - start), flow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224, help="square frame side in px")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "flow_shrink.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    prev_np, next_np = make_pairs(args.batch, args.size, args.size)
    prev = torch.from_numpy(prev_np).to(args.device)
    nxt = torch.from_numpy(next_np).to(args.device)
    masked_rate, masked = timed(prev, nxt, shrink=False)
    shrink_rate, shrunk = timed(prev, nxt, shrink=True)
    result = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name() if prev.is_cuda else "cpu",
        },
        "batch": args.batch,
        "size": args.size,
        "threads": args.threads,
        "masked_pairs_per_s": masked_rate,
        "shrink_pairs_per_s": shrink_rate,
        "speedup": shrink_rate / masked_rate,
        "max_abs_flow_difference_px": float((shrunk - masked).abs().max()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"masked {masked_rate:.3f} pairs/s, shrinking {shrink_rate:.3f} pairs/s, "
          f"x{result['speedup']:.2f}, max |diff| {result['max_abs_flow_difference_px']} px")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
