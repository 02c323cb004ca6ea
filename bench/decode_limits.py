"""Cost of the decode watchdog: probing (a full sequential decode) with and without it.

:mod:`vpipe.video.decode` checks a monotonic clock per demuxed packet and per frame so
that a hostile file cannot hang a job. This writes one MPEG-4 AVI with B-frames (the
codec of UCF101 and HMDB51) and probes it ``--repeats`` times with the real watchdog and
with its checks replaced by no-ops, alternating in one process, so the ratio holds while
the machine's speed varies. Goal: the watchdog costs under 1 % of a decode.

    python bench/decode_limits.py --frames 300 --out bench/results/decode_limits.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.machine import cpu_model, emit_result, load_average
from vpipe.video import decode
from vpipe.video.write import write_video


class _NoWatchdog(decode._Watchdog):
    """The same interface, doing nothing: the decode as it was before the watchdog."""

    def check(self) -> None:
        pass

    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.avi"
        base = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        write_video(path, (np.roll(base, 3 * t, axis=1) for t in range(args.frames)), codec="mpeg4")
        watchdogs = {"watchdog": decode._Watchdog, "none": _NoWatchdog}
        samples: dict[str, list[float]] = {name: [] for name in watchdogs}
        decode.probe_video(path)  # warm-up: file cache, codec initialisation
        for _ in range(args.repeats):
            for name, cls in watchdogs.items():
                decode._Watchdog = cls
                try:
                    started = time.perf_counter()
                    info = decode.probe_video(path)
                    samples[name].append(time.perf_counter() - started)
                finally:
                    decode._Watchdog = watchdogs["watchdog"]
                assert info.num_frames == args.frames
    median = {name: sorted(xs)[len(xs) // 2] for name, xs in samples.items()}
    result = {
        "machine": {"cpu": cpu_model(), "load_average": load_average()},
        "frames": args.frames,
        "video": "320x240 MPEG-4 Part 2 AVI with B-frames",
        "median_probe_s": median,
        "samples": samples,
        "overhead": median["watchdog"] / median["none"] - 1.0,
        "goal": "< 0.01",
    }
    emit_result(result, args.out)


if __name__ == "__main__":
    main()
