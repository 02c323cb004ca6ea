"""`vpipe verify` throughput, and the cost of checksummed shard writes and reads.

The same float16 clips (``--clips`` per shard, a layer of ``--layer-shape``, like a ReLU
grid) are written to ``--shards`` shards by plain h5py with one row per chunk, with and
without Fletcher-32, and by :class:`vpipe.store.ShardWriter` (Fletcher-32, SHA-256 of
the file, fsync). The checksum costs are the differences between the plain writes and
the SHA-256 time of the files; reads compare plain row reads with and without
Fletcher-32 (and the finite check readers add), and the FeatureSet path end to end.
Then :func:`vpipe.stages.verify.verify` checks the cache, timed against ``sha256sum``
reading the same files in the same run (the reference: hashing speed of this machine).

    python bench/verify.py --root /tmp/vpipe-verify --out bench/results/verify.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model, load_average
from vpipe.artifacts import file_digest
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.verify import verify
from vpipe.store import FeatureSet, ShardWriter, write_index

#: UCF101 with LI3D: 13,320 videos x 10 clips x 2 views, rgb and flow, pool (1, 1024) float16.
UCF101_BYTES = 13_320 * 10 * 2 * 2 * 1024 * 2


def write_checked(directory: Path, arrays: np.ndarray, shards: int) -> float:
    started = time.perf_counter()
    rows = []
    for s in range(shards):
        with ShardWriter(directory / f"shard-{s:04d}.h5", attrs={"bench": 1}) as writer:
            for c, clip in enumerate(arrays):
                writer.add(f"v{s:04d}-{c // 10}", c % 10, 0, {"grid": clip})
        rows += writer.rows
    write_index(directory, rows)
    return time.perf_counter() - started


def write_plain(directory: Path, arrays: np.ndarray, shards: int, *, fletcher32: bool = False) -> float:
    directory.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    for s in range(shards):
        with h5py.File(directory / f"shard-{s:04d}.h5", "w") as handle:
            dset = handle.create_dataset("layers/grid", shape=arrays.shape, chunks=(1, *arrays.shape[1:]),
                                         dtype=np.float16, fletcher32=fletcher32)  # fmt: skip
            for c, clip in enumerate(arrays):
                dset[c] = clip
    return time.perf_counter() - started


def read_checked(directory: Path) -> float:
    started = time.perf_counter()
    with FeatureSet.open(directory) as features:
        for video in features.video_ids():
            features.clips(video, layer="grid")
    return time.perf_counter() - started


def read_plain(directory: Path, clips: int, *, finite: bool = False) -> float:
    started = time.perf_counter()
    for path in sorted(directory.glob("shard-*.h5")):
        with h5py.File(path, "r") as handle:
            dset = handle["layers/grid"]
            for c in range(clips):
                row = dset[c]
                if finite:
                    np.isfinite(row).all()
    return time.perf_counter() - started


def digest_all(directory: Path) -> float:
    started = time.perf_counter()
    for path in sorted(directory.glob("shard-*.h5")):
        file_digest(path)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/vpipe-verify"))
    parser.add_argument("--shards", type=int, default=48)
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--layer-shape", default="2,2048,7,7")
    parser.add_argument("--out", type=Path, default=Path("bench/results/verify.json"))
    args = parser.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)
    shape = tuple(int(x) for x in args.layer_shape.split(","))
    arrays = np.random.default_rng(0).standard_normal((args.clips, *shape)).astype(np.float16)
    ws = DatasetWorkspace(args.root, "bench")
    checked_dir, plain_dir = ws.features_dir("checked"), args.root / "plain"

    write_plain(plain_dir, arrays, 1)  # warm h5py and the page cache before timing
    shutil.rmtree(plain_dir)
    results: dict[str, object] = {"shards": args.shards, "clips_per_shard": args.clips, "layer_shape": list(shape)}
    fletcher_dir = args.root / "fletcher32"
    results["write_plain_s"] = write_plain(plain_dir, arrays, args.shards)
    results["write_fletcher32_s"] = write_plain(fletcher_dir, arrays, args.shards, fletcher32=True)
    results["digest_s"] = digest_all(fletcher_dir)
    results["write_shardwriter_s"] = write_checked(checked_dir, arrays, args.shards)
    results["read_plain_s"] = read_plain(plain_dir, args.clips)
    results["read_fletcher32_s"] = read_plain(fletcher_dir, args.clips)
    results["read_fletcher32_finite_s"] = read_plain(fletcher_dir, args.clips, finite=True)
    results["read_featureset_s"] = read_checked(checked_dir)
    files = sorted(checked_dir.glob("shard-*.h5"))
    total = sum(p.stat().st_size for p in files)
    sha256sum = []
    for _ in range(2):  # before and after verify, so neither gets a warmer page cache
        started = time.perf_counter()
        subprocess.run(["sha256sum", *map(str, files)], check=True, capture_output=True)
        sha256sum.append(time.perf_counter() - started)
        if len(sha256sum) == 1:
            report = verify(ws, ("extract",))
    assert report.ok, report.problems
    results["sha256sum_s"] = min(sha256sum)
    results["verify_s"] = report.seconds
    results["cache_bytes"] = total
    results["verify_gb_per_s"] = total / report.seconds / 1e9
    results["sha256sum_gb_per_s"] = total / results["sha256sum_s"] / 1e9
    results["verify_vs_sha256sum"] = report.seconds / results["sha256sum_s"]
    results["write_overhead_fletcher32"] = results["write_fletcher32_s"] / results["write_plain_s"] - 1
    results["write_overhead_digest"] = results["digest_s"] / results["write_plain_s"]
    results["read_overhead_fletcher32"] = results["read_fletcher32_s"] / results["read_plain_s"] - 1
    results["read_overhead_fletcher32_finite"] = results["read_fletcher32_finite_s"] / results["read_plain_s"] - 1
    results["ucf101_li3d_cache_gb"] = UCF101_BYTES / 1e9
    results["ucf101_li3d_verify_s_estimate"] = UCF101_BYTES / (total / report.seconds)
    results["machine"] = {"cpu": cpu_model(), "load_average": load_average()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    shutil.rmtree(args.root, ignore_errors=True)


if __name__ == "__main__":
    main()
