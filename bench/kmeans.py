"""FAISS vs scikit-learn k-means on the same descriptors, same start, same iterations.

Both start from the same K points of the data (so the objectives are comparable and
differ only by arithmetic), run ``--niter`` Lloyd iterations (scikit-learn with
``tol=0``, stopping early only if no point changes cell, so time per iteration is
reported too) and are scored by the same
inertia: the sum of squared distances to the nearest final centroid, in float64.

Data: clustered random float32 descriptors (``--n`` × ``--dim``, ``--true-clusters``
Gaussian blobs), or, with ``--features DIR``, per-step descriptors of a feature set.
Writes JSON (``--out``, default bench/results/kmeans.json) with machine information
and prints a table.

    python bench/kmeans.py                       # about 2 minutes on 2 cores
    python bench/kmeans.py --n 100000 --dim 1024 --clusters 64,128,256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import faiss
import numpy as np
import sklearn
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_info, threadpool_limits

from vpipe.encode.kmeans import assign, fit_kmeans
from vpipe.store import FeatureSet


def clustered(n: int, dim: int, true_clusters: int, seed: int) -> np.ndarray:
    """Gaussian blobs with unequal spreads, like pooled CNN descriptors of many classes."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(true_clusters, dim)).astype(np.float32)
    spread = rng.uniform(0.3, 1.0, size=true_clusters).astype(np.float32)
    which = rng.integers(0, true_clusters, size=n)
    return centres[which] + spread[which, None] * rng.standard_normal((n, dim), dtype=np.float32)


def feature_descriptors(directory: Path, n: int, seed: int) -> np.ndarray:
    with FeatureSet.open(directory) as features:
        x = np.concatenate([features.sequence(v).astype(np.float32) for v in features.video_ids()])
    rng = np.random.default_rng(seed)
    return x[np.sort(rng.choice(len(x), size=min(n, len(x)), replace=False))]


def inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    return float(assign(x, centroids)[1].astype(np.float64).sum())


def run_one(x: np.ndarray, k: int, niter: int, seed: int) -> dict[str, object]:
    init = x[np.random.default_rng(seed).choice(len(x), size=k, replace=False)]
    start = time.perf_counter()
    ours = fit_kmeans(x, k, seed=seed, niter=niter, use_gpu=None, init_centroids=init)
    faiss_s = time.perf_counter() - start
    start = time.perf_counter()
    ref = KMeans(n_clusters=k, init=init, n_init=1, max_iter=niter, tol=0.0, algorithm="lloyd").fit(x)
    sklearn_s = time.perf_counter() - start
    return {
        "clusters": k,
        "faiss_seconds": round(faiss_s, 3),
        "sklearn_seconds": round(sklearn_s, 3),
        "faiss_seconds_per_iteration": round(faiss_s / niter, 4),
        "sklearn_seconds_per_iteration": round(sklearn_s / ref.n_iter_, 4),
        "speedup_per_iteration": round((sklearn_s / ref.n_iter_) / (faiss_s / niter), 2),
        "faiss_inertia": ours.objective,
        "sklearn_inertia": inertia(x, ref.cluster_centers_.astype(np.float32)),
        "sklearn_iterations": int(ref.n_iter_),
        "faiss_device": ours.device,
    }


def machine() -> dict[str, object]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "faiss": faiss.__version__,
        "faiss_gpus": faiss.get_num_gpus(),
        "sklearn": sklearn.__version__,
        "numpy": np.__version__,
        "blas": sorted({f"{p['internal_api']} {p.get('version')}" for p in threadpool_info()}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000, help="descriptors")
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--true-clusters", type=int, default=200)
    parser.add_argument("--clusters", default="64,128,256", help="comma-separated K values")
    parser.add_argument("--niter", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--features", type=Path, help="feature-set directory to take descriptors from")
    parser.add_argument("--threads", type=int, help="threads for both libraries [default: their own defaults]")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "kmeans.json")
    args = parser.parse_args()

    if args.features:
        x = feature_descriptors(args.features, args.n, args.seed)
        source = str(args.features)
    else:
        x = clustered(args.n, args.dim, args.true_clusters, args.seed)
        source = f"clustered random, {args.true_clusters} blobs"
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    with threadpool_limits(args.threads):
        rows = [run_one(x, int(k), args.niter, args.seed) for k in args.clusters.split(",")]
    result = {
        "data": {"source": source, "n": int(len(x)), "dim": int(x.shape[1]), "niter": args.niter},
        "threads": args.threads or "library defaults",
        "load_average": os.getloadavg(),
        "machine": machine(),
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{len(x)} x {x.shape[1]} descriptors ({source}), {args.niter} iterations, same initial centroids, "
        f"threads: {result['threads']}, load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{'K':>5}{'faiss s':>9}{'sk s':>7}{'sk iters':>9}{'faiss s/it':>11}{'sk s/it':>9}{'speedup/it':>11}"
        f"{'faiss inertia':>15}{'sk inertia':>13}{'rel diff':>10}"
    )
    for r in rows:
        diff = (r["faiss_inertia"] - r["sklearn_inertia"]) / r["sklearn_inertia"]
        print(
            f"{r['clusters']:>5}{r['faiss_seconds']:>9.2f}{r['sklearn_seconds']:>7.2f}{r['sklearn_iterations']:>9}"
            f"{r['faiss_seconds_per_iteration']:>11.3f}{r['sklearn_seconds_per_iteration']:>9.3f}"
            f"{r['speedup_per_iteration']:>11.2f}{r['faiss_inertia']:>15.6g}{r['sklearn_inertia']:>13.6g}{diff:>10.2e}"
        )
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
