"""How fast the interactive commands answer, against ``import torch`` in the same run.

Whole-process wall times (a fresh interpreter each, as a user types the command),
median of ``--repeats``, interleaved with ``python -c "import torch"`` so that a
machine that is slower today moves both. Goals (issue "Interactive commands answer at
once"): ``vpipe --help`` at most 0.3x ``import torch``; ``vpipe status`` on the main
job's workspace at most 1x.

``--workspace`` names a finished main-job workspace (``vpipe run --dataset synthetic``);
without it a small one is made first (4 videos per class, small crops), which has the
same stages and so costs ``status`` about the same.

    python bench/cli.py --repeats 5 --out bench/results/cli.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model, load_average

GOALS = {"--help": 0.3, "status": 1.0}


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workspace", type=Path, help="A finished main-job workspace.")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cli.json"))
    args = parser.parse_args()

    vpipe = [sys.executable, "-m", "vpipe.cli.app"]
    with tempfile.TemporaryDirectory() as scratch:
        workspace = args.workspace
        if workspace is None:
            workspace = Path(scratch) / "ws"
            subprocess.run(
                [*vpipe, "run", "--dataset", "synthetic", "--workspace", str(workspace), "--videos-per-class", "4",
                 "--workers", "0", "-o", "size=32", "-o", "short_side=48", "-o", "need=8", "--quiet"],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        commands = {
            "import torch": [sys.executable, "-c", "import torch"],
            "--help": [*vpipe, "--help"],
            "status --help": [*vpipe, "status", "--help"],
            "heads": [*vpipe, "heads"],
            "backbones": [*vpipe, "backbones"],
            "status": [*vpipe, "status", "--dataset", "synthetic", "--workspace", str(workspace)],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeats):
            for name, argv in commands.items():
                times[name].append(wall(argv))

    medians = {name: statistics.median(values) for name, values in times.items()}
    torch_s = medians["import torch"]
    rows = {
        name: {
            "median_s": round(medians[name], 3),
            "times_s": [round(t, 3) for t in times[name]],
            "x_import_torch": round(medians[name] / torch_s, 3),
            **({"goal_x": GOALS[name], "met": medians[name] / torch_s <= GOALS[name]} if name in GOALS else {}),
        }
        for name in commands
    }
    result = {"machine": cpu_model(), "load_average": load_average(), "repeats": args.repeats, "commands": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for name, row in rows.items():
        goal = f"  goal <= {row['goal_x']}x: {'met' if row['met'] else 'NOT met'}" if "goal_x" in row else ""
        print(f"{name:<14} {row['median_s']:7.3f} s  {row['x_import_torch']:5.2f}x import torch{goal}")


if __name__ == "__main__":
    main()
