"""Benchmark: decoding speed and frame accuracy of decord, PyAV and vpipe's read_frames.

Writes its own videos (MPEG-4 Part 2 AVI with B-frames, as in UCF101/HMDB51, and
H.264 MP4) whose frames show their index in binary, then times each method on two
workloads and checks every returned frame against the index that was asked for:

* ``full``: all frames of every video, in order;
* ``clips``: 16-frame clips at random start positions, each read from a freshly
  opened file, as the extract stage does.

Everything runs in one process with one decoding thread, as in a pipeline worker.
Rates are given per wall-clock second and per CPU second of this process; the
second is steadier on a machine shared with other work.
Usage: ``python bench/decode.py [--videos 8] [--frames 300] [--out bench/results/decode.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import decord
import numpy as np

from vpipe.video.decode import probe_video, read_frames
from vpipe.video.write import write_video
from machine import cpu_model  # bench/machine.py, beside this script

CLIP_LENGTH = 16
CLIPS_PER_VIDEO = 4
HEIGHT, WIDTH = 240, 320
BITS = 10  # up to 1024 frames per video
STRIP = 24  # height of the band that carries the frame index
SUFFIX = {"mpeg4": ".avi", "h264": ".mp4"}

#: a reader takes (path, indices, info) and returns frames for those indices.
Reader = Callable[[Path, list[int], object], np.ndarray]


@dataclass
class Result:
    codec: str
    workload: str
    method: str
    seconds: float
    cpu_seconds: float
    frames: int
    clips: int
    frames_per_s: float
    frames_per_cpu_s: float
    clips_per_s: float | None
    exact: bool
    wrong_frames: int


def index_frame(index: int, texture: np.ndarray) -> np.ndarray:
    """A natural-looking panning texture with ``index`` in binary across the top band."""
    dy = int(40 + 30 * np.sin(index / 17))
    dx = int(60 + 50 * np.cos(index / 23))
    frame = texture[dy : dy + HEIGHT, dx : dx + WIDTH].copy()
    block = WIDTH // BITS
    for bit in range(BITS):
        frame[:STRIP, bit * block : (bit + 1) * block] = 255 if index >> bit & 1 else 0
    return frame


def frame_index(frame: np.ndarray) -> int:
    block = WIDTH // BITS
    rows = slice(STRIP // 4, 3 * STRIP // 4)
    centres = [
        frame[rows, bit * block + block // 4 : (bit + 1) * block - block // 4] for bit in range(BITS)
    ]
    return sum(int(centre.mean() > 127) << bit for bit, centre in enumerate(centres))


def make_texture(seed: int) -> np.ndarray:
    """Smooth random texture, larger than a frame so that it can pan."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (HEIGHT // 8 + 16, WIDTH // 8 + 16, 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)


def write_videos(root: Path, count: int, frames: int) -> dict[str, list[Path]]:
    videos: dict[str, list[Path]] = {codec: [] for codec in SUFFIX}
    for number in range(count):
        texture = make_texture(number)
        for codec, suffix in SUFFIX.items():
            path = root / f"{codec}-{number}{suffix}"
            write_video(path, (index_frame(i, texture) for i in range(frames)), codec=codec)
            videos[codec].append(path)
    return videos


def decord_get_batch(path: Path, indices: list[int], info: object) -> np.ndarray:
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return reader.get_batch(indices).asnumpy()


def decord_sequential(path: Path, indices: list[int], info: object) -> np.ndarray:
    """Decode from the start with next(); indices must be consecutive and ascending."""
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    kept = []
    for index in range(indices[-1] + 1):
        frame = reader.next()
        if index >= indices[0]:
            kept.append(frame.asnumpy())
    return np.stack(kept)


def pyav_sequential(path: Path, indices: list[int], info: object) -> np.ndarray:
    """Decode from the start, converting only the wanted consecutive frames to RGB."""
    kept = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        for index, frame in enumerate(container.decode(stream)):
            if index >= indices[0]:
                kept.append(frame.to_ndarray(format="rgb24"))
            if index == indices[-1]:
                break
    return np.stack(kept)


def vpipe_auto(path: Path, indices: list[int], info: object) -> np.ndarray:
    return read_frames(path, indices, info=info)


def vpipe_pyav(path: Path, indices: list[int], info: object) -> np.ndarray:
    return read_frames(path, indices, decoder="pyav", info=info)


METHODS: dict[str, Reader] = {
    "decord get_batch": decord_get_batch,
    "decord sequential": decord_sequential,
    "pyav sequential": pyav_sequential,
    "read_frames auto": vpipe_auto,
    "read_frames pyav": vpipe_pyav,
}


def run_workload(
    codec: str, workload: str, method: str, jobs: list[tuple[Path, list[int], object]]
) -> Result:
    reader = METHODS[method]
    wrong = frames = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    outputs = [reader(path, indices, info) for path, indices, info in jobs]
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    for (_, indices, _), output in zip(jobs, outputs):
        frames += len(indices)
        wrong += sum(frame_index(frame) != index for frame, index in zip(output, indices))
    clips = len(jobs) if workload == "clips" else 0
    return Result(
        codec=codec,
        workload=workload,
        method=method,
        seconds=round(seconds, 4),
        cpu_seconds=round(cpu_seconds, 4),
        frames=frames,
        clips=clips,
        frames_per_s=round(frames / seconds, 1),
        frames_per_cpu_s=round(frames / cpu_seconds, 1),
        clips_per_s=round(clips / seconds, 1) if clips else None,
        exact=wrong == 0,
        wrong_frames=wrong,
    )


def time_probe(codec: str, paths: list[Path], decoder: str, frames: int) -> Result:
    start, cpu_start = time.perf_counter(), time.process_time()
    counts = [probe_video(path, decoder=decoder).num_frames for path in paths]
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    total = sum(counts)
    return Result(
        codec=codec,
        workload="probe",
        method=f"probe_video {decoder}",
        seconds=round(seconds, 4),
        cpu_seconds=round(cpu_seconds, 4),
        frames=total,
        clips=0,
        frames_per_s=round(total / seconds, 1),
        frames_per_cpu_s=round(total / cpu_seconds, 1),
        clips_per_s=None,
        exact=all(count == frames for count in counts),
        wrong_frames=sum(abs(count - frames) for count in counts),
    )


def machine_info() -> dict[str, object]:
    cpu = cpu_model()
    return {
        "cpu_model": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "av": av.__version__,
        "decord": decord.__version__,
        "ffmpeg_in_av": {name: ".".join(map(str, v)) for name, v in av.library_versions.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8, help="videos per codec")
    parser.add_argument("--frames", type=int, default=300, help="frames per video")
    parser.add_argument("--seed", type=int, default=0, help="seed for clip start positions")
    default_out = Path(__file__).parent / "results" / "decode.json"
    parser.add_argument("--out", type=Path, default=default_out, help="JSON report path")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="vpipe-bench-decode-") as tmp:
        start = time.perf_counter()
        videos = write_videos(Path(tmp), args.videos, args.frames)
        encode_seconds = time.perf_counter() - start
        for codec, paths in videos.items():
            for decoder in ("pyav", "decord"):
                results.append(time_probe(codec, paths, decoder, args.frames))
            infos = {path: probe_video(path) for path in paths}
            full = [(path, list(range(args.frames)), infos[path]) for path in paths]
            starts = rng.integers(0, args.frames - CLIP_LENGTH + 1, (len(paths), CLIPS_PER_VIDEO))
            clips = [
                (path, list(range(int(s), int(s) + CLIP_LENGTH)), infos[path])
                for path, row in zip(paths, starts)
                for s in row
            ]
            for method in METHODS:
                results.append(run_workload(codec, "full", method, full))
                results.append(run_workload(codec, "clips", method, clips))
    report = {
        "benchmark": "decode",
        "machine": machine_info(),
        "config": {
            "videos_per_codec": args.videos,
            "frames_per_video": args.frames,
            "size": f"{WIDTH}x{HEIGHT}",
            "clip_length": CLIP_LENGTH,
            "clips_per_video": CLIPS_PER_VIDEO,
            "seed": args.seed,
            "threads": 1,
            "encode_seconds": round(encode_seconds, 2),
        },
        "results": [asdict(result) for result in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(results)
    print(f"\nwrote {args.out}")


def print_table(results: list[Result]) -> None:
    header = (
        f"{'codec':6} {'workload':8} {'method':20} {'frames/s':>9} {'frames/cpu-s':>12} "
        f"{'clips/s':>8} {'exact':>6} {'wrong':>6}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        clips = f"{r.clips_per_s:8.1f}" if r.clips_per_s is not None else f"{'':8}"
        print(
            f"{r.codec:6} {r.workload:8} {r.method:20} {r.frames_per_s:9.1f} "
            f"{r.frames_per_cpu_s:12.1f} {clips} "
            f"{'yes' if r.exact else 'NO':>6} {r.wrong_frames:6d}"
        )


if __name__ == "__main__":
    main()
