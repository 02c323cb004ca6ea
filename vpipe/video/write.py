"""Writing videos with PyAV.

Used to build the synthetic dataset and test fixtures. The codec choice matters:
UCF101 and HMDB51 are MPEG-4 Part 2 AVIs with B-frames, on which decord's random
access mis-seeks; writing the same kind of file lets tests prove frame accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import av
import numpy as np

from vpipe.artifacts import atomic_path

#: codec name -> (PyAV encoder, encoder options). Both use two B-frames and a short GOP
#: so that seeking has to deal with reordered frames.
CODECS: dict[str, tuple[str, dict[str, str]]] = {
    "mpeg4": ("mpeg4", {"bf": "2", "g": "12", "qscale": "3"}),
    "h264": ("libx264", {"bf": "2", "g": "12", "crf": "18", "preset": "veryfast"}),
}


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    *,
    fps: float = 25.0,
    codec: str = "mpeg4",
) -> Path:
    """Encode RGB uint8 frames of shape (H, W, 3) to ``path``.

    The container follows the suffix (``.avi``, ``.mp4``, ...). Width and height are
    taken from the first frame and must be even (yuv420p). The file is written under a
    temporary name and renamed, so a crash never leaves a half-written video behind.
    """
    if codec not in CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {sorted(CODECS)}")
    encoder, options = CODECS[codec]
    path = Path(path)
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise ValueError("write_video needs at least one frame")
    height, width = first.shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"frame size {width}x{height} must be even for yuv420p")
    with atomic_path(path, keep_suffix=True) as tmp, av.open(str(tmp), "w") as container:
        stream = container.add_stream(encoder, rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.options = dict(options)
        for frame in _chain(first, frames):
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _chain(first: np.ndarray, rest: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    yield first
    yield from rest
