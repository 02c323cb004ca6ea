"""RSS of the trainer's input path alone, with glibc's mmap threshold as it is and fixed.

Reads every video of a map cache built by ``bench/scale.py`` (its ``maps-<head>``
workspace) once through the trainer's loader (reader cache, float32 items,
micro-batches), with no model, in a fresh process per point, and records the RSS after
the pass and its peak. ``glibc`` leaves the allocator as it starts; ``fixed`` calls
:func:`vpipe.train.memory.return_large_blocks` first, as training does. Each size's
fixed point is compared with its glibc point in the same run (``fixed_over_glibc``).

    python bench/scale.py --root /tmp/scale --stages train --epochs 1 --head vcm-sdd --sizes 1000
    python bench/input_memory.py --root /tmp/scale --head vcm-sdd --sizes 250 1000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model, load_average

MODES = ("glibc", "fixed")


def point(root: Path, head: str, videos: int, mode: str, micro_batch: int) -> dict[str, Any]:
    """One pass over the first ``videos`` of the head's map cache (in-process)."""
    import gc

    import pandas as pd

    from bench.scale import MAP_CACHES, subset_workspace
    from vpipe.pipeline.workspace import DatasetWorkspace
    from vpipe.train import TrainConfig
    from vpipe.train.data import InputReader, loader
    from vpipe.train.identity import run_inputs
    from vpipe.train.memory import return_large_blocks

    if mode == "fixed":
        return_large_blocks()
    full = DatasetWorkspace(root, f"maps-{head}")
    ws = full if len(pd.read_parquet(full.manifest_path)) == videos else subset_workspace(full, videos)
    ids = list(pd.read_parquet(ws.manifest_path)["video_id"])
    config = TrainConfig(features=MAP_CACHES[head].features, head=head)
    with InputReader(ws, run_inputs(config)) as reader:
        for batch in loader(reader, ids, {v: 0 for v in ids}, batch_size=32, train=True, micro_batch=micro_batch):
            del batch
        gc.collect()
        status = {
            line.split(":")[0]: int(line.split()[1]) * 1024
            for line in open("/proc/self/status")
            if line.startswith(("VmRSS", "VmHWM"))
        }
        cached = reader._cached
    return {"head": head, "videos": len(ids), "mode": mode, "micro_batch": micro_batch,
            "rss_after_bytes": status["VmRSS"], "peak_rss_bytes": status["VmHWM"], "cached_bytes": cached}  # fmt: skip


def measure(root: Path, head: str, videos: int, mode: str, micro_batch: int) -> dict[str, Any]:
    """:func:`point` in a fresh interpreter with glibc's own defaults (no MALLOC_ variables)."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from bench.input_memory import point; "
        "print(json.dumps(point(__import__('pathlib').Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], "
        "int(sys.argv[6]))))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    repo = str(Path(__file__).resolve().parent.parent)
    args = [sys.executable, "-c", code, repo, str(root), head, str(videos), mode, str(micro_batch)]
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"{head} {videos} {mode} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=Path("/tmp/vpipe-scale"))
    parser.add_argument("--head", default="vcm-sdd")
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 1000])
    parser.add_argument("--micro-batch", type=int, default=12)
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parent / "results" / "input_memory.json")
    args = parser.parse_args()
    points = [measure(args.root, args.head, n, mode, args.micro_batch) for n in args.sizes for mode in MODES]
    by = {(p["videos"], p["mode"]): p for p in points}
    compared = [
        {"videos": n, "peak_fixed_over_glibc": round(by[n, "fixed"]["peak_rss_bytes"] / by[n, "glibc"]["peak_rss_bytes"], 3),
         "after_fixed_over_glibc": round(by[n, "fixed"]["rss_after_bytes"] / by[n, "glibc"]["rss_after_bytes"], 3)}
        for n in args.sizes
    ]  # fmt: skip
    machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "load_average": load_average()}
    result = {"machine": machine, "points": points, "fixed_over_glibc": compared}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
