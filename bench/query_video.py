"""``vpipe search --video`` latency, broken down into probe / twin / decode / model / search.

A small folder dataset of generated 320×240 H.264 videos (``--seconds`` long at 25 fps)
is probed, planned (li3d: ``--need`` frames, ``--size`` crops), extracted with
randomly initialised LI3D rgb and indexed as ``features:li3d-rgb``; a renamed
byte-identical copy of one video is then queried ``--repeats`` times through
:meth:`vpipe.retrieval.Index.search_video`, the path ``vpipe search --video`` takes
(Python start-up and imports excluded). Each query is also taken apart with the same
library functions it calls: the full-decode probe, the gallery twin lookup, decoding
and cropping the planned frames, the backbone forward pass (model already built), and
the FAISS search.

References, in the same run, so that figures do not depend on the day's CPU speed or
load as seconds do: the extract stage's own time per gallery video (decode + the same
forward pass), so ``query / extract`` is the overhead a query adds over extracting one
video; ``import torch`` in a fresh process, against which every part is a ratio; this
CPU's float32 GEMM rate now (GFLOP/s of a 2048² matmul on the same threads) and the
clips' FLOPs (counted on the meta device), whose quotient is the forward pass's time at
GEMM speed; and the trainable reference module's forward on the same clips, which the
fused inference model must match (cosine to it >= 0.9999) and beat.

    python bench/query_video.py                      # LI3D at its real input (64 x 224 x 224)
    python bench/query_video.py --need 16 --size 112 # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_model, emit_result, load_average  # bench/machine.py, beside this script


def seconds(fn, *args, **kwargs):
    begin = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - begin


def cpu_seconds(fn, *args, **kwargs):
    """(value, wall seconds, CPU seconds of this process): on a shared machine the CPU time is
    the work done, the wall time that work plus the waiting for a core."""
    begin, cpu = time.perf_counter(), time.process_time()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - begin, time.process_time() - cpu


def fresh_process(ws, name: str, query: Path, repeats: int) -> dict[str, object]:
    """``vpipe search --video`` in a new process each time, less the start-up of ``vpipe search --help``.

    The help run imports the same CLI modules and exits, so the difference is the
    query's own work: probe, twin lookup, model build, decode, forward, search.
    """
    vpipe = str(Path(sys.executable).with_name("vpipe"))
    search = [vpipe, "search", "--dataset", ws.dataset, "--workspace", str(ws.root), "--index", name,
              "--video", str(query), "-k", "5", "--device", "cpu", "--json"]  # fmt: skip
    startup, total = [], []
    for _ in range(repeats):
        _, seconds_taken = seconds(subprocess.run, [vpipe, "search", "--help"], check=True, capture_output=True)
        startup.append(seconds_taken)
        done, seconds_taken = seconds(subprocess.run, search, check=True, capture_output=True, text=True)
        total.append(seconds_taken)
        assert json.loads(done.stdout)[0]["score"] >= 0.9999, done.stdout
    return {
        "process_seconds": [round(t, 3) for t in total],
        "startup_seconds": [round(t, 3) for t in startup],
        "median_query_excluding_startup": round(float(np.median(total) - np.median(startup)), 3),
    }


def import_torch_seconds(repeats: int = 2) -> float:
    """Median wall time of ``python -c "import torch"``: a unit of this machine's speed right now."""
    times = [seconds(subprocess.run, [sys.executable, "-c", "import torch"], check=True)[1] for _ in range(repeats)]
    return float(np.median(times))


def gemm_gflops(size: int = 2048, repeats: int = 3) -> tuple[float, float]:
    """Float32 matmul rate of this CPU now, on torch's threads, best of ``repeats``:
    (GFLOP per wall second, GFLOP per CPU second)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    runs = [cpu_seconds(torch.mm, a, b)[1:] for _ in range(repeats)]
    flop = 2 * size**3 / 1e9
    return flop / min(wall for wall, _ in runs), flop / min(cpu for _, cpu in runs)


def clip_gflops(model: torch.nn.Module, shape: tuple[int, ...]) -> float:
    """FLOPs of one forward pass on a batch of ``shape``, counted without computing it."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        copy.deepcopy(model).to("meta").forward_features(torch.empty(shape, device="meta"))
    return counter.get_total_flops() / 1e9


def main() -> None:
    from vpipe.extract.features import extract_videos, load_model, run_model, to_model_input
    from vpipe.extract.inputs import crop_rgb_clips
    from vpipe.models import backbone
    from vpipe.pipeline.executor import InProcessExecutor
    from vpipe.pipeline.runner import run_stage
    from vpipe.pipeline.workspace import DatasetWorkspace
    from vpipe.retrieval import Index, IndexOptions, build_index
    from vpipe.artifacts.provenance import FeatureProvenance
    from vpipe.retrieval.query_video import extract_config, gallery_twin, probe_query, query_video
    from vpipe.stages.dataset import configure_dataset
    from vpipe.stages.extract import ExtractStage
    from vpipe.stages.plan import PlanStage
    from vpipe.stages.probe import ProbeStage
    from vpipe.video.plan import sampler_config
    from vpipe.video.write import write_video

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each generated video")
    parser.add_argument("--videos", type=int, default=2, help="gallery videos")
    parser.add_argument("--need", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "query_video.json")
    args = parser.parse_args()
    frames_per_video = int(round(args.seconds * 25))
    short_side = max(args.size, 256 * args.size // 224 // 2 * 2)
    rng = np.random.default_rng(0)
    load = {"start": load_average()}
    import_torch = import_torch_seconds()
    gemm, gemm_cpu = gemm_gflops()
    with tempfile.TemporaryDirectory(prefix="bench-query-") as scratch:
        root = Path(scratch) / "clips"
        for k in range(args.videos):
            texture = rng.integers(0, 255, (240, 320 + 3 * frames_per_video, 3), dtype=np.uint8)
            frames = np.stack([texture[:, 3 * t : 3 * t + 320] for t in range(frames_per_video)])
            write_video(root / f"c{k % 2}" / f"v{k}.mp4", frames, fps=25, codec="h264")
        ws = DatasetWorkspace(Path(scratch) / "ws", "clips")
        executor = InProcessExecutor()
        run_stage(ProbeStage(ws, configure_dataset(ws, adapter="folder", root=root)), executor, progress=False)
        plan = sampler_config("li3d", need=args.need, size=args.size, short_side=short_side)
        run_stage(PlanStage(ws, plan), executor, progress=False)
        _, extract = seconds(
            run_stage, ExtractStage(ws, backbone="li3d", stream="rgb", device="cpu"), executor, progress=False
        )
        name = build_index(ws, "features:li3d-rgb", IndexOptions(exact=True))["name"]
        index = Index.open(ws, name=name)
        provenance = FeatureProvenance.from_dict(index.metadata["provenance"]["features"])
        original = sorted(root.rglob("*.mp4"))[-1]
        query = Path(scratch) / "renamed copy.mp4"
        shutil.copy(original, query)
        rows = []
        for _ in range(args.repeats):
            hits, total = seconds(index.search_video, query, k=5, device="cpu")
            info, probe = seconds(probe_query, query)
            sizes = ws.read_manifest()[["video_id", "width", "height"]]
            twin, twin_s = seconds(gallery_twin, index.rows.merge(sizes, on="video_id"), query, (info.width, info.height))
            with query_video(query, device="cpu", twin=twin, info=info) as qv:
                job = qv.job(provenance)
                clips, decode = seconds(crop_rgb_clips, job, provenance.decoder)
                config = extract_config(provenance, qv.scratch / "features", "cpu", None)
                model = load_model(config.backbone, config.stream, config.weights, config.options, config.device,
                                   config.weights_sha256)  # fmt: skip
                fused, forward, forward_cpu = cpu_seconds(run_model, model, clips, torch.device("cpu"))
                _, extract_one = seconds(extract_videos, config, [job])
                reference = backbone(config.backbone, stream=config.stream, weights=config.weights,
                                     **dict(config.options))  # fmt: skip
                unfused, reference_forward, reference_cpu = cpu_seconds(run_model, reference, clips, torch.device("cpu"))
                a, b = fused[0]["pool"].ravel(), unfused[0]["pool"].ravel()
                cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
                assert cosine >= 0.9999, cosine
                shape = tuple(to_model_input(torch.from_numpy(np.stack([c.data for c in clips])), model).shape)
                gflop = clip_gflops(model, shape)
            vector = index.vectors_of([hits[0].video_id])
            _, search = seconds(index.search_vectors, vector, 5)
            rows.append({"total": total, "probe": probe, "twin": twin_s, "decode": decode, "flow": 0.0,
                         "forward": forward, "reference_forward": reference_forward,
                         "extract_videos": extract_one, "search": search,
                         "forward_cpu": forward_cpu, "reference_forward_cpu": reference_cpu})  # fmt: skip
            assert hits[0].video_id == twin[0] and hits[0].score >= 0.9999, hits[:2]
        cli = fresh_process(ws, name, query, args.repeats)
    median = {key: round(float(np.median([r[key] for r in rows])), 3) for key in rows[0]}
    per_video = extract / args.videos
    at_gemm_speed = gflop / gemm
    result = {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "torch_threads": torch.get_num_threads(),
        "load_average": {**load, "end": load_average()},
        "video": f"{frames_per_video} frames ({args.seconds:g} s) 320x240 H.264; li3d need {args.need}, "
        f"{args.size}x{args.size} crop; LI3D rgb, random init",
        "gallery_videos": args.videos,
        "query_computes": {"clips": len(clips), "model_input": list(shape), "gflop": round(gflop, 2),
                           "flow": "none (rgb embedding)", "layers": list(fused[0])},
        "import_torch_seconds": round(import_torch, 3),
        "gemm_gflops_per_wall_s": round(gemm, 1),
        "gemm_gflops_per_cpu_s": round(gemm_cpu, 1),
        "breakdown_over_import_torch": {key: round(value / import_torch, 3) for key, value in median.items()},
        "forward_at_gemm_speed_seconds": round(at_gemm_speed, 3),
        "forward_over_gemm_speed": round(median["forward"] / at_gemm_speed, 3),
        "forward_cpu_over_gemm_cpu": round(median["forward_cpu"] / (gflop / gemm_cpu), 3),
        "reference_over_fused_forward": round(median["reference_forward"] / median["forward"], 3),
        "reference_over_fused_forward_cpu": round(median["reference_forward_cpu"] / median["forward_cpu"], 3),
        "fused_to_reference_cosine": round(cosine, 7),
        "query_seconds": [round(r["total"], 3) for r in rows],
        "cli": cli,
        "median_seconds": median,
        "extract_stage_seconds_per_video": round(per_video, 3),
        "query_over_extract": round(median["total"] / per_video, 3),
        "top_hit_score": round(hits[0].score, 6),
    }
    emit_result(result, args.out)


if __name__ == "__main__":
    main()
