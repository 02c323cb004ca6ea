"""``report.html`` build time at 101 and 400 classes, against drawing the confusion figure alone.

A tiny run is trained on the test suite's fake cache, then its stored results are
rewritten to 101 and to 400 classes (:func:`widen_run`: a seeded confusion matrix of 40
test videos per class, about 70 % on the diagonal, errors mostly within hidden groups of
five classes, and class names), the shape of a UCF101 and a Kinetics-400 run. At 400
classes the page draws the matrix as clustered inline SVG (:mod:`vpipe.report.confusion_map`). :func:`vpipe.report.build_report` then draws its curves and confusion
matrix and writes ``report.md`` and ``report.html`` with the per-class table, the top
confusions and the failure summary; t-SNE is off, because it embeds the run's real test
videos through its model (its cost at 101 classes, capped at 500 videos, is in
``bench/scale.py --stages report``).

Peer, in the same process: :func:`vpipe.report.plots.plot_confusion` of the same matrix,
the one figure every 101-class report already drew. The limit is the report goal of
BENCHMARKS.md, one minute, and the ratio shows what the page's tables add.

    python bench/report_build.py --output bench/results/report_build.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import cpu_model, emit_result, load_average  # noqa: E402
from vpipe.pipeline.workspace import DatasetWorkspace  # noqa: E402
from vpipe.train import runs  # noqa: E402

LIMIT_S = 60.0
#: Classes per fabricated confusion group.
GROUP_SIZE = 5
#: Class counts measured: UCF101 and Kinetics-400.
CLASS_COUNTS = (101, 400)


def confusion_groups(classes: int, size: int = GROUP_SIZE, seed: int = 0) -> np.ndarray:
    """A hidden group per class, ``size`` classes each, scattered over the label order."""
    return np.random.default_rng(seed + 1).permutation(classes) // size


def widen_run(ws: DatasetWorkspace, source: str, target: str, classes: int = 101, per_class: int = 40,
              seed: int = 0) -> str:  # fmt: skip
    """Copy run ``source`` to ``target`` with a fabricated ``classes``-class confusion matrix.

    As in real datasets, classes are confused mostly within small groups of similar ones
    (:func:`confusion_groups`; 70 % of a class's errors go to its group, the rest anywhere),
    so a clustered matrix has blocks to show.
    """
    rng = np.random.default_rng(seed)
    groups = confusion_groups(classes, seed=seed)
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for i in range(classes):
        correct = int(rng.binomial(per_class, rng.uniform(0.4, 0.95)))
        matrix[i, i] = correct
        mates = np.flatnonzero((groups == groups[i]) & (np.arange(classes) != i))
        others = np.delete(np.arange(classes), i)
        for _ in range(per_class - correct):
            pool = mates if len(mates) and rng.random() < 0.7 else others
            matrix[i, rng.choice(pool)] += 1
    names = [f"Class{i:03d}" for i in range(classes)]
    src, dst = ws.dir / "runs" / source, ws.dir / "runs" / target
    shutil.copytree(src, dst, dirs_exist_ok=True)
    config = runs.read_json(dst / runs.CONFIG_FILE)
    config["data"]["class_names"] = names
    runs.write_json(dst / runs.CONFIG_FILE, config)
    metrics = runs.read_json(dst / runs.METRICS_FILE)
    support = matrix.sum(axis=1)
    metrics.update(
        confusion=matrix.tolist(), videos=int(support.sum()), accuracy=float(np.trace(matrix) / support.sum()),
        per_class=[{"label": i, "class": n, "support": int(support[i])} for i, n in enumerate(names)],
    )  # fmt: skip
    runs.write_json(dst / runs.METRICS_FILE, metrics)
    return target


def trained_workspace(root: Path) -> DatasetWorkspace:
    """The fake cache with one short BiLSTM run, as the report tests train it."""
    import torch

    from tests.fake_cache import make_workspace
    from tests.test_train import cfg
    from vpipe.train import train

    torch.set_num_threads(1)
    ws = make_workspace(root)
    train(ws, cfg(temporal="bilstm", aggregation="concat", max_epochs=3), run_id="small")
    return ws


def measure(ws: DatasetWorkspace, root: Path, classes: int, repeats: int) -> dict[str, Any]:
    from vpipe.report import build_report
    from vpipe.report.plots import plot_confusion

    run_id = widen_run(ws, "small", f"wide-{classes}", classes=classes)
    stored = runs.load_run(ws, run_id)
    report_s, figure_s = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        result = build_report(ws, [run_id], tsne=False, device="cpu")
        report_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        plot_confusion(np.asarray(stored.metrics["confusion"]), stored.config.class_names,
                       root / "peer.png", "peer")  # fmt: skip
        figure_s.append(time.perf_counter() - start)
    report, figure = float(np.median(report_s)), float(np.median(figure_s))
    page = Path(result["html"])
    shutil.rmtree(ws.dir / "runs" / run_id)
    return {
        "classes": classes,
        "report_s": round(report, 3),
        "confusion_figure_s": round(figure, 3),
        "ratio_report_to_figure": round(report / figure, 2),
        "html_bytes": page.stat().st_size,
        "limit_s": LIMIT_S,
        "within_limit": report <= LIMIT_S,
        "repeats": repeats,
        "load_average": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ws = trained_workspace(Path(tmp))
        measured = [measure(ws, Path(tmp), classes, args.repeats) for classes in CLASS_COUNTS]
    result = {"cpu": cpu_model(), "runs": measured}
    emit_result(result, args.output)
    over = [m for m in measured if not m["within_limit"]]
    if over:
        sys.exit(f"report build at {over[0]['classes']} classes took {over[0]['report_s']} s, over the {LIMIT_S} s limit")


if __name__ == "__main__":
    main()
