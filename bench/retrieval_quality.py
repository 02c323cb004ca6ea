"""R@1 / R@5 / mAP on the synthetic set, raw against centred against whitened.

The main job runs once on a small synthetic set (``--videos-per-class``, small crops so
it takes minutes on 2 cores); then each embedding — the mean-pooled LI3D features, their
VLAD encoding and the first trained run's embedding — is indexed three ways (no centring,
centred on the gallery mean, centred and PCA-whitened) and evaluated with test videos
querying the train gallery. Reference, in the same run: chance, the R@1 and mAP of a
random ranking (the share of train videos of the query's label), so gains read as
multiples of chance; the spread of gallery scores (1st-99th percentile) says whether
raw scores had collapsed.

    python bench/retrieval_quality.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
from machine import cpu_model, load_average  # bench/machine.py, beside this script

VARIANTS = {"raw": {"centre": False}, "centred": {"centre": True}, "whitened": {"centre": True, "whiten": True}}


def main() -> None:
    from typer.testing import CliRunner

    from vpipe.cli.app import app
    from vpipe.pipeline.workspace import DatasetWorkspace
    from vpipe.retrieval import Index, IndexOptions, build_index, evaluate_index
    from vpipe.train import completed_runs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos-per-class", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "retrieval_quality.json")
    args = parser.parse_args()
    result = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
              "load_average": {"start": load_average()}, "rows": []}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as scratch:
        job = ["run", "--dataset", "synthetic", "--workspace", scratch, "--videos-per-class",
               str(args.videos_per_class), "--workers", "0", "-o", "size=32", "-o", "short_side=48", "-o", "need=8",
               "--stream", "rgb", "--json"]  # fmt: skip
        done = CliRunner().invoke(app, job, catch_exceptions=False)
        assert done.exit_code == 0, done.output
        ws = DatasetWorkspace(Path(scratch), "synthetic")
        runs = completed_runs(ws)
        embeddings = ["features:li3d-rgb", "encodings:li3d-rgb-k16-vlad", *(f"run:{r}" for r in runs[:1])]
        rows = ws.read_manifest()
        train, test = rows[rows.split == "train"], rows[rows.split == "test"]
        share = train.label.value_counts(normalize=True)
        result["chance"] = {"R@1": round(float(test.label.map(share).fillna(0).mean()), 4),
                            "mAP": round(float(test.label.map(share).fillna(0).mean()), 4)}  # fmt: skip
        result["videos"] = {"train": len(train), "test": len(test), "classes": int(rows.label.nunique())}
        for embedding in embeddings:
            for variant, options in VARIANTS.items():
                summary = build_index(ws, embedding, IndexOptions(name=f"{variant}-{abs(hash(embedding)) % 10**6}", **options))
                evaluation = evaluate_index(Index.open(ws, name=summary["name"]))
                spread = summary["score_spread"]["indexed"]
                row = {"embedding": embedding, "variant": variant, "dim": summary["dim"],
                       **{k: round(evaluation[k], 4) for k in ("R@1", "R@5", "mAP")},
                       "scores_p1_p99": [round(spread["p1"], 4), round(spread["p99"], 4)]}  # fmt: skip
                result["rows"].append(row)
                print(json.dumps(row), flush=True)
    result["load_average"]["end"] = load_average()
    best = {}
    for row in result["rows"]:
        best.setdefault(row["embedding"], []).append((row["mAP"], row["variant"]))
    result["best_by_map"] = {e: max(v)[1] for e, v in best.items()}
    result["mean_map_by_variant"] = {
        v: round(float(np.mean([r["mAP"] for r in result["rows"] if r["variant"] == v])), 4) for v in VARIANTS
    }
    print(json.dumps({k: result[k] for k in ("chance", "videos", "best_by_map", "mean_map_by_variant")}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
