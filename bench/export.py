"""``vpipe export`` throughput and peak memory at gallery sizes up to Kinetics scale.

For each ``--sizes`` value a fabricated workspace is written (manifest and a
``toy-k1-vlad`` encodings file of ``--dim``-dimensional vectors), then exported in a
fresh process, which reports rows/s and its peak RSS. Reference, in the same run: the
peak RSS of a process that imports the same modules and reads the id map only (no
vectors), so ``peak - reference`` is what the vectors cost; bounded memory means it
stays near one batch (4096 rows) whatever the gallery size.

    python bench/export.py                          # 13k and 240k videos x 256
    python bench/export.py --sizes 1000 --dim 64    # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from machine import cpu_model, load_average  # bench/machine.py, beside this script

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.retrieval.embeddings import parse_embedding
from vpipe.retrieval.export import export_embedding
ws = DatasetWorkspace(Path(sys.argv[1]), "fake")
begin = time.perf_counter()
if sys.argv[3] == "export":
    summary = export_embedding(ws, "encodings:toy-k1-vlad", sys.argv[2])
else:
    parse_embedding("encodings:toy-k1-vlad").fingerprint(ws)
    summary = {"rows": 0}
seconds = time.perf_counter() - begin
print(json.dumps({"rows": summary["rows"], "seconds": seconds,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def fabricate(root: Path, n: int, dim: int) -> None:
    """A manifest and an encodings file of n videos (written a block at a time)."""
    from vpipe.encode.encoding_io import EncodingWriter
    from vpipe.pipeline.workspace import DatasetWorkspace
    from vpipe.store import ShardWriter, shard_name, write_index

    ws = DatasetWorkspace(root, "fake")
    ws.dir.mkdir(parents=True, exist_ok=True)
    ids = [f"class{i % 400:03d}/video{i:07d}" for i in range(n)]
    labels = np.arange(n) % 400
    splits = np.where(np.arange(n) % 10 == 0, "test", "train")
    pd.DataFrame({"video_id": ids, "path": [f"/videos/{v}.mp4" for v in ids], "label": labels,
                  "label_name": [f"class{lab:03d}" for lab in labels], "split": splits, "status": "ok",
                  "fps": 25.0}).to_parquet(ws.manifest_path)  # fmt: skip
    directory = ws.features_dir("toy")
    with ShardWriter(directory / shard_name("extract", "all"), attrs={"backbone": "li3d", "stream": "rgb"}) as writer:
        writer.add(ids[0], 0, 0, {"pool": np.ones((2, 4), np.float32)})
    write_index(directory, writer.rows)
    rows = pd.DataFrame({"video_id": ids, "label": labels, "split": splits})
    provenance = {"method": "vlad", "features": "toy", "layer": "pool", "clusters": 1, "codebook_fingerprint": "cb"}
    rng = np.random.default_rng(0)
    with EncodingWriter(ws.encoding_path("toy", 1, "vlad"), rows, dim, fingerprint="enc", provenance=provenance) as w:
        for row in range(n):
            w.write(row, rng.standard_normal(dim, dtype=np.float32))


def child(workspace: Path, output: Path, mode: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", CHILD, str(workspace), str(output), mode], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="13320,240000")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "export.json")
    args = parser.parse_args()
    result = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
              "dim": args.dim, "load_average": {"start": load_average()}, "sizes": []}  # fmt: skip
    for n in (int(s) for s in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="bench-export-") as scratch:
            root = Path(scratch)
            fabricate(root, n, args.dim)
            reference = child(root, root / "unused.parquet", "listing")
            run = child(root, root / "out.parquet", "export")
            size_mib = (root / "out.parquet").stat().st_size / 2**20
        case = {
            "videos": n,
            "rows_per_second": round(run["rows"] / run["seconds"]),
            "seconds": round(run["seconds"], 2),
            "peak_rss_mib": round(run["peak_rss_mib"], 1),
            "reference_peak_rss_mib": round(reference["peak_rss_mib"], 1),
            "vectors_held_mib": round(n * args.dim * 4 / 2**20, 1),
            "file_mib": round(size_mib, 1),
        }
        result["sizes"].append(case)
        print(json.dumps(case), flush=True)
    result["load_average"]["end"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
