"""Retrieval: index build time, query latency and recall@10 by gallery size, and a new-video query.

Part 1, synthetic galleries: ``--sizes`` × ``--dims`` clustered unit vectors (1000
Gaussian blobs of unequal spread, like pooled features of many classes). Each gallery
goes through exactly what ``vpipe index`` does (``plan_index`` picks the kind,
``build`` trains IVF quantisers on a sample, ``tune_search`` measures recall and sets
``nprobe`` / ``k_factor``), then:

- query latency: ``--queries`` single-vector searches (k = 10) one at a time, p50 / p99,
  with faiss's default OpenMP threads (what the CLI uses) and with one thread;
- recall@10 against exact search on ``--recall-queries`` other queries (noisy gallery
  vectors), exact top-10 by brute-force numpy;
- the latency of that brute-force numpy search for comparison.

Part 2, ``--video``: the end-to-end latency of ``vpipe search --video`` on CPU with the
real LI3D configuration (64 frames, 224×224 crops): a small folder dataset of generated
320×240 videos is probed, planned, extracted and indexed once, then a copy of one video
is queried ``--video-repeats`` times (probe + plan + decode + LI3D + search).

Writes JSON (``--out``, default bench/results/retrieval.json) and prints a table.

    python bench/retrieval.py                                  # about 15 minutes on 2 cores
    python bench/retrieval.py --sizes 10000,100000 --dims 512 --no-video
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np
import torch
from machine import cpu_model, load_average  # bench/machine.py, beside this script

from vpipe.retrieval import faiss_index


def clustered_unit(n: int, dim: int, seed: int, centres: int = 1000, block: int = 100_000) -> np.ndarray:
    """Unit vectors around ``centres`` overlapping blobs, built a block at a time to bound peak memory.

    Blob radii (0.5 to 2 per dimension) reach past the distance between centres (√2 per
    dimension), so neighbourhoods straddle IVF cells as real features' do; well separated
    blobs would let one probed cell find every neighbour.
    """
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((centres, dim), dtype=np.float32)
    spread = rng.uniform(0.5, 2.0, size=centres).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, block):
        which = rng.integers(0, centres, size=min(block, n - start))
        noise = rng.standard_normal((len(which), dim), dtype=np.float32)
        x[start : start + len(which)] = faiss_index.normalise(means[which] + spread[which, None] * noise)
    return x


def noisy_queries(x: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(x), size=count, replace=False)
    noise = rng.normal(scale=0.05 / np.sqrt(x.shape[1]), size=(count, x.shape[1]))
    return faiss_index.normalise(x[rows] + noise)


def percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3)}


def gallery_case(n: int, dim: int, queries: int, recall_queries: int, seed: int) -> dict[str, object]:
    x = clustered_unit(n, dim, seed)
    plan = faiss_index.plan_index(n, dim)
    start = time.perf_counter()
    index, report = faiss_index.build(x, plan, gpu=False, seed=seed)
    built = time.perf_counter() - start
    tuned = faiss_index.tune_search(index, x, plan, seed=seed)
    tune_seconds = time.perf_counter() - start - built
    latency: dict[int, list[float]] = {}
    for threads in sorted({faiss.omp_get_max_threads(), 1}, reverse=True):
        default = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads)
        for query in noisy_queries(x, queries, seed + 2):
            begin = time.perf_counter()
            faiss_index.search(index, query, 10, kind=plan.kind, params=plan.params)
            latency.setdefault(threads, []).append(time.perf_counter() - begin)
        faiss.omp_set_num_threads(default)
    held_out = noisy_queries(x, recall_queries, seed + 3)
    truth = faiss_index.exact_top(x, held_out, 10)
    found = faiss_index.search(index, held_out, 10, kind=plan.kind, params=plan.params)[1]
    brute = []
    for query in held_out[:50]:
        begin = time.perf_counter()
        np.argpartition(-(x @ query), 10)[:10]
        brute.append(time.perf_counter() - begin)
    return {
        "n": n,
        "dim": dim,
        "kind": plan.kind,
        "factory": plan.factory(dim),
        "params": dict(plan.params),
        "build_seconds": round(built, 2),
        "train_vectors": report.get("train_vectors", 0),
        "tune_seconds": round(tune_seconds, 2),
        "index_bytes": int(faiss.serialize_index(index).nbytes),
        "expected_recall_at_10": tuned["expected_recall_at_10"],
        "recall_at_10": round(faiss_index.recall_at(found, truth), 4),
        "query": percentiles(latency[max(latency)]),
        "query_one_thread": percentiles(latency[1]),
        "numpy_exact_query": percentiles(brute),
    }


def video_case(repeats: int) -> dict[str, object]:
    """LI3D at its real input size on generated 320×240 videos: index once, query a copy."""
    from vpipe.pipeline.executor import InProcessExecutor
    from vpipe.pipeline.runner import run_stage
    from vpipe.pipeline.workspace import DatasetWorkspace
    from vpipe.retrieval import Index, build_index
    from vpipe.stages.dataset import configure_dataset
    from vpipe.stages.extract import ExtractStage
    from vpipe.stages.plan import PlanStage
    from vpipe.stages.probe import ProbeStage
    from vpipe.video.decode import probe_video
    from vpipe.video.plan import sampler_config
    from vpipe.video.write import write_video

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bench-retrieval-") as scratch:
        root = Path(scratch) / "clips"
        for label in range(2):
            for k in range(3):
                texture = rng.integers(0, 255, (240, 640, 3), dtype=np.uint8)
                frames = np.stack([texture[:, t * (2 + label) : t * (2 + label) + 320] for t in range(90)])
                write_video(root / f"c{label}" / f"v{k}.mp4", frames, codec="h264")
        ws = DatasetWorkspace(Path(scratch) / "ws", "clips")
        executor = InProcessExecutor()
        run_stage(ProbeStage(ws, configure_dataset(ws, adapter="folder", root=root)), executor, progress=False)
        run_stage(PlanStage(ws, sampler_config("li3d")), executor, progress=False)
        started = time.perf_counter()
        run_stage(ExtractStage(ws, backbone="li3d", stream="rgb", device="cpu"), executor, progress=False)
        extract_seconds = time.perf_counter() - started
        name = build_index(ws, "features:li3d-rgb")["name"]
        index = Index.open(ws, name=name)
        query = Path(scratch) / "query.mp4"
        shutil.copy(root / "c1" / "v2.mp4", query)
        total, probe = [], []
        for _ in range(repeats):
            begin = time.perf_counter()
            hits = index.search_video(query, k=5, device="cpu")
            total.append(time.perf_counter() - begin)
            begin = time.perf_counter()
            probe_video(query)
            probe.append(time.perf_counter() - begin)
        assert hits[0].video_id == "c1/v2", hits
        return {
            "video": "90 frames 320x240 H.264, li3d sampler (need 64, 224x224 centre crop), LI3D rgb, random init",
            "gallery_videos": len(index.rows),
            "extract_seconds_per_gallery_video": round(extract_seconds / len(index.rows), 2),
            "repeats": repeats,
            "query_seconds": [round(s, 2) for s in total],
            "median_query_seconds": round(float(np.median(total)), 2),
            "median_probe_seconds": round(float(np.median(probe)), 3),
            "top_hit_score": round(hits[0].score, 6),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--dims", default="512,1024")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--recall-queries", type=int, default=500)
    parser.add_argument("--video-repeats", type=int, default=3)
    parser.add_argument("--no-video", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "retrieval.json")
    args = parser.parse_args()
    result: dict[str, object] = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "torch_threads": torch.get_num_threads(),
        "load_average": {"start": load_average()},
        "galleries": [],
    }
    print(f"{'n':>9} {'dim':>5} {'kind':<9} {'params':<34} {'build s':>8} {'tune s':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'1-thr p50':>9} {'R@10':>6} {'numpy ms':>9}")  # fmt: skip
    for dim in (int(d) for d in args.dims.split(",")):
        for n in (int(s) for s in args.sizes.split(",")):
            case = gallery_case(n, dim, args.queries, args.recall_queries, args.seed)
            result["galleries"].append(case)
            params = ",".join(f"{k}={v}" for k, v in case["params"].items())
            print(f"{n:>9} {dim:>5} {case['kind']:<9} {params:<34} {case['build_seconds']:>8.1f} "
                  f"{case['tune_seconds']:>7.1f} {case['query']['p50_ms']:>7.2f} {case['query']['p99_ms']:>7.2f} "
                  f"{case['query_one_thread']['p50_ms']:>9.2f} {case['recall_at_10']:>6.3f} {case['numpy_exact_query']['p50_ms']:>9.2f}", flush=True)  # fmt: skip
    if not args.no_video:
        result["video_query"] = video_case(args.video_repeats)
        print(json.dumps(result["video_query"], indent=2))
    result["load_average"]["end"] = load_average()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
