"""Test videos whose frames carry their own index.

Frame ``i`` shows ``i`` in binary as eight black/white blocks across its top half,
so a test can tell which frame a decoder really returned without trusting any
decoder. The blocks survive lossy coding: only their centres are read and the
threshold sits halfway between black and white. The bottom half is a texture that
moves every frame, so encoders produce real motion-compensated P- and B-frames.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from vpipe.video.write import write_video

BITS = 8
#: file suffix for each codec that write_video knows, matching what datasets ship.
SUFFIX = {"mpeg4": ".avi", "h264": ".mp4"}


def index_frame(index: int, height: int = 64, width: int = 96) -> np.ndarray:
    """An RGB frame that encodes ``index`` (0 <= index < 256)."""
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    block = width // BITS
    for bit in range(BITS):
        if index >> bit & 1:
            frame[: height // 2, bit * block : (bit + 1) * block] = 255
    rows = np.arange(height - height // 2)[:, None]
    cols = np.arange(width)[None, :]
    frame[height // 2 :, :, 0] = (cols * 8 + index * 5) % 256
    frame[height // 2 :, :, 1] = (rows * 8 + index * 3) % 256
    frame[height // 2 :, :, 2] = ((rows + cols) * 4 + index * 7) % 256
    return frame


def frame_index(frame: np.ndarray) -> int:
    """Read back the index written by :func:`index_frame` from a decoded frame."""
    height, width = frame.shape[:2]
    block = width // BITS
    top, bottom = height // 8, 3 * height // 8
    index = 0
    for bit in range(BITS):
        centre = frame[top:bottom, bit * block + block // 4 : (bit + 1) * block - block // 4]
        index |= int(centre.mean() > 127) << bit
    return index


def write_indexed_video(
    path: Path, num_frames: int, codec: str, height: int = 64, width: int = 96
) -> Path:
    """Write frames 0..num_frames-1 of :func:`index_frame` with ``codec``."""
    frames = (index_frame(i, height, width) for i in range(num_frames))
    return write_video(path, frames, fps=25, codec=codec)


def truncate_after_prefix(source: Path, target: Path, max_frames: int) -> int:
    """Cut ``source`` so that exactly the first k <= max_frames frames remain decodable.

    Packets are stored in decode order, which differs from display order when there
    are B-frames; cutting just before packet k leaves whole frames 0..k-1 only when the
    first k packets carry exactly those display positions. The demuxer's packet table
    is independent of any decoding, so it serves as the truth. Returns k; the
    container header still claims the original frame count.
    """
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        packets = [(p.pos, p.pts) for p in container.demux(stream) if p.size]
    display = {pts: rank for rank, pts in enumerate(sorted(pts for _, pts in packets))}
    seen: set[int] = set()
    best = 0
    for k, (_, pts) in enumerate(packets[:max_frames], start=1):
        seen.add(display[pts])
        if seen == set(range(k)):
            best = k
    target.write_bytes(source.read_bytes()[: packets[best][0]])
    return best


def damage_b_frame(source: Path, target: Path) -> int:
    """Copy ``source`` with one B-frame's payload overwritten; return that frame's index.

    A B-frame is a packet shown before the packet stored just ahead of it. No other
    frame refers to a B-frame in MPEG-4 Part 2, so losing it must lose nothing else.
    The container structure is left intact (same size), only the codec data breaks.
    """
    with av.open(str(source)) as container:
        packets = [(p.pos, p.size, p.pts) for p in container.demux(video=0) if p.size]
    display = {pts: rank for rank, pts in enumerate(sorted(pts for _, _, pts in packets))}
    middle = len(packets) // 2
    pos, size, pts = next(
        packet
        for previous, packet in zip(packets[middle:], packets[middle + 1 :])
        if packet[2] < previous[2]
    )
    data = bytearray(source.read_bytes())
    data[pos : pos + size] = b"\xff" * size
    target.write_bytes(bytes(data))
    return display[pts]
