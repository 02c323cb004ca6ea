"""Throughput of vpipe's batched TV-L1 against OpenCV's DualTVL1, same thread count.

Both solvers see the same synthetic textured pairs (a smooth random motion of a
few pixels) with OpenCV's default parameters. OpenCV computes one pair at a time,
so its pairs/s does not depend on the batch size. Results go to a JSON file with
the machine description, and a table to stdout.

    python bench/flow.py --threads 1 2 --pairs 8 --out bench/results/flow.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from vpipe.flow import tvl1

SIZES = ((224, 224), (340, 256))


def make_pairs(n: int, width: int, height: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 grey pairs: blurred noise and a sinusoid, shifted by a smooth flow."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    prevs, nexts = [], []
    for i in range(n):
        noise = cv2.GaussianBlur(rng.standard_normal((height, width)).astype(np.float32), (0, 0), 1.5)
        frame = np.clip(128 + 60 * noise + 40 * np.sin(xx / 5.0 + i), 0, 255).astype(np.float32)
        amp = 1.0 + 3.0 * (i % 4)
        fx = amp * np.cos(2 * np.pi * yy / height + i)
        fy = 0.7 * amp * np.sin(2 * np.pi * xx / width + i)
        prev = cv2.remap(frame, xx + fx, yy + fy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        prevs.append(np.clip(prev, 0, 255).astype(np.uint8))
        nexts.append(frame.astype(np.uint8))
    return np.stack(prevs), np.stack(nexts)


def opencv_pairs_per_s(prev: np.ndarray, nxt: np.ndarray) -> float:
    solver = cv2.optflow.DualTVL1OpticalFlow_create()
    start = time.perf_counter()
    for a, b in zip(prev, nxt):
        solver.calc(a, b, None)
    return len(prev) / (time.perf_counter() - start)


def ours_pairs_per_s(prev: torch.Tensor, nxt: torch.Tensor, batch: int) -> float:
    """Pairs/s over all pairs, in batches of ``batch``; one warm-up batch first."""
    sync = torch.cuda.synchronize if prev.is_cuda else (lambda: None)
    tvl1(prev[:batch], nxt[:batch])
    sync()
    start = time.perf_counter()
    for i in range(0, len(prev), batch):
        tvl1(prev[i : i + batch], nxt[i : i + batch])
    sync()
    return len(prev) / (time.perf_counter() - start)


def machine() -> dict[str, object]:
    info: dict[str, object] = {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "opencv": cv2.__version__,
    }
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--pairs", type=int, default=8, help="pairs timed per CPU setting")
    parser.add_argument("--gpu-batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "flow.json")
    args = parser.parse_args()

    rows = []
    for width, height in SIZES:
        prev_np, next_np = make_pairs(max(args.pairs, *args.batches), width, height)
        prev, nxt = torch.from_numpy(prev_np), torch.from_numpy(next_np)
        for threads in dict.fromkeys(args.threads):
            torch.set_num_threads(threads)
            cv2.setNumThreads(threads)
            cv_rate = opencv_pairs_per_s(prev_np[: args.pairs], next_np[: args.pairs])
            for batch in args.batches:
                rate = ours_pairs_per_s(prev[: max(args.pairs, batch)], nxt[: max(args.pairs, batch)], batch)
                rows.append(dict(device="cpu", size=f"{width}x{height}", threads=threads, batch=batch,
                                 ours_pairs_per_s=rate, opencv_pairs_per_s=cv_rate))
        if torch.cuda.is_available():
            gpu_pairs = max(args.gpu_batches) * 2
            prev_np, next_np = make_pairs(gpu_pairs, width, height)
            prev_gpu, next_gpu = torch.from_numpy(prev_np).cuda(), torch.from_numpy(next_np).cuda()
            for batch in args.gpu_batches:
                rate = ours_pairs_per_s(prev_gpu, next_gpu, batch)
                rows.append(dict(device="cuda", size=f"{width}x{height}", threads=None, batch=batch,
                                 ours_pairs_per_s=rate, opencv_pairs_per_s=None))

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "pairs": args.pairs, "results": rows}, indent=2))
    print(f"{'device':6} {'size':8} {'threads':>7} {'batch':>5} {'ours/s':>8} {'opencv/s':>8} {'ratio':>6}")
    for r in rows:
        cv_rate = r["opencv_pairs_per_s"]
        print(f"{r['device']:6} {r['size']:8} {str(r['threads'] or '-'):>7} {r['batch']:>5} "
              f"{r['ours_pairs_per_s']:8.2f} {cv_rate or float('nan'):8.2f} "
              f"{r['ours_pairs_per_s'] / cv_rate if cv_rate else float('nan'):6.2f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
