"""Frame-accurate video decoding with decord and PyAV.

Every stage downstream indexes videos by frame number, so a decoder that returns
frame 110 when asked for frame 120 silently corrupts features. Three facts shape
this module:

* decord's random access (``vr[i]``, ``get_batch``) mis-seeks on MPEG-4 Part 2
  AVIs with B-frames, the codec of UCF101 and HMDB51; its keyframe table for
  such files is shifted. It is exact on H.264 in MP4/MOV, whose sample tables
  carry exact timestamps. Random access is therefore used only for H.264 in an
  ISO-BMFF container; everything else is decoded sequentially from the start,
  keeping only the requested frames, which is exact for every codec.
* Sequential decoding is cheapest with PyAV, which converts to RGB only the
  frames that were asked for; decord converts every frame it passes (its
  ``skip_frames`` seeks, wrongly, on MPEG-4 AVIs). On 16-frame clips from
  MPEG-4 AVIs that makes PyAV two to three times faster (bench/decode.py).
* Container headers lie about frame counts (a damaged AVI may claim 150 frames
  and decode 68), and decord and PyAV may even disagree on where a damaged
  stream ends. :func:`probe_video` therefore counts by decoding the whole
  stream, without colour conversion, with the decoder that will later read it
  sequentially. That costs one decode per video, paid once in the probe stage;
  a demuxed packet count is cheaper but cannot see packets that fail to decode.

Decoders: ``"pyav"`` and ``"decord"`` do everything with that library;
``"auto"`` uses decord for random access where it is exact (falling back to
PyAV if decord cannot open or read the file) and PyAV for all sequential work,
so that frame counts and frame numbers come from one decoder. Both run
single-threaded because many decodes run at once in worker processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import av
import decord
import numpy as np

from vpipe.errors import DecodeError

DECODERS = ("auto", "decord", "pyav")

#: decord raises both, depending on where inside it the failure happens.
_DECORD_ERRORS = (RuntimeError, decord.DECORDError)

#: (codec, container) pairs on which decord's random access was verified exact.
_RANDOM_ACCESS_CODECS = frozenset({"h264"})
_RANDOM_ACCESS_CONTAINERS = frozenset({"mp4", "mov"})


@dataclass(frozen=True)
class VideoInfo:
    """What a video really holds: ``num_frames`` is the count that decodes, not the header's."""

    num_frames: int
    fps: float
    width: int
    height: int
    codec: str


class _Header(NamedTuple):
    codec: str
    fps: float
    container: frozenset[str]


def probe_video(path: str | Path, *, decoder: str = "auto") -> VideoInfo:
    """Describe a video, counting its frames by decoding all of them.

    ``"auto"`` counts with PyAV, the decoder it reads sequentially with, so the count
    is exactly what :func:`read_frames` and :func:`iter_frames` can deliver.
    """
    path = _check_file(path, decoder)
    header = _read_header(path)
    num_frames, shape = 0, (0, 0, 3)
    with closing(_frames(path, decoder, convert=lambda index: index == 0)) as frames:
        for frame in frames:
            if frame is not None:
                shape = frame.shape
            num_frames += 1
    return VideoInfo(num_frames, header.fps, width=shape[1], height=shape[0], codec=header.codec)


def read_frames(
    path: str | Path,
    indices: Sequence[int],
    *,
    decoder: str = "auto",
    info: VideoInfo | None = None,
) -> np.ndarray:
    """Return the frames at ``indices`` (any order, repeats allowed) as (N, H, W, 3) uint8 RGB.

    Random access needs a trustworthy frame count to check indices against, so it is
    used only when ``info`` (from :func:`probe_video`) is given and the codec is one
    on which decord seeks exactly (not with ``decoder="pyav"``); otherwise the video
    is decoded sequentially up to the largest index, which also finds out-of-range
    indices by itself. ``"auto"`` reads sequentially with PyAV, and also when decord
    fails on a file it would have read by random access.
    """
    path = _check_file(path, decoder)
    wanted = np.asarray(indices, dtype=np.int64)
    if wanted.ndim != 1 or wanted.size == 0:
        raise ValueError(f"indices must be a non-empty 1-D sequence, got shape {wanted.shape}")
    if wanted.min() < 0:
        raise DecodeError(f"frame index {wanted.min()} is negative: {path}")
    if info is not None and wanted.max() >= info.num_frames:
        raise DecodeError(
            f"frame index {wanted.max()} out of range: {path} has {info.num_frames} frames"
        )
    header = _read_header(path)
    unique, inverse = np.unique(wanted, return_inverse=True)
    if decoder != "pyav" and info is not None and _random_access_is_exact(header):
        try:
            return _decord_batch(path, unique)[inverse]
        except _DECORD_ERRORS as exc:
            if decoder == "decord":
                raise DecodeError(f"decord cannot read {path}: {_reason(exc)}") from exc
    return _read_sequential(path, unique, decoder)[inverse]


def iter_frames(path: str | Path, *, decoder: str = "auto") -> Iterator[np.ndarray]:
    """Yield every frame in order as (H, W, 3) uint8 RGB.

    The file is checked before the iterator is returned, so a missing or non-video
    file fails at the call rather than at the first ``next()``.
    """
    path = _check_file(path, decoder)
    _read_header(path)
    return _frames(path, decoder, convert=lambda index: True)


def _check_file(path: str | Path, decoder: str) -> Path:
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {DECODERS}")
    path = Path(path)
    if not path.is_file():
        raise DecodeError(f"video not found: {path}")
    if path.stat().st_size == 0:
        raise DecodeError(f"video file is empty (0 bytes): {path}")
    return path


def _read_header(path: Path) -> _Header:
    """Open the container with PyAV to reject non-videos early.

    decord happily opens a text file and only fails later, with noise on stderr; a
    header read costs about a millisecond and gives one clear error for every decoder.
    """
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DecodeError(f"no video stream in {path}")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or 0
            return _Header(
                stream.codec_context.name,
                float(rate),
                frozenset(container.format.name.split(",")),
            )
    except av.FFmpegError as exc:
        raise DecodeError(f"cannot open video {path}: {_reason(exc)}") from exc


def _random_access_is_exact(header: _Header) -> bool:
    return header.codec in _RANDOM_ACCESS_CODECS and bool(
        header.container & _RANDOM_ACCESS_CONTAINERS
    )


def _read_sequential(path: Path, unique: np.ndarray, decoder: str) -> np.ndarray:
    """Decode from the start up to ``unique[-1]``, keeping only the frames in ``unique``.

    Memory stays at one frame per distinct index, whatever the length of the video.
    """
    needed = set(unique.tolist())
    out: np.ndarray | None = None
    kept = decoded = 0
    with closing(_frames(path, decoder, convert=needed.__contains__)) as frames:
        for index, frame in enumerate(frames):
            decoded = index + 1
            if index not in needed:
                continue
            if out is None:
                out = np.empty((len(unique), *frame.shape), dtype=np.uint8)
            out[kept] = frame
            kept += 1
            if kept == len(unique):
                return out
    raise DecodeError(
        f"frame index {unique[kept]} out of range: {path} decodes {decoded} frames"
    )


def _frames(
    path: Path, decoder: str, convert: Callable[[int], bool]
) -> Iterator[np.ndarray | None]:
    """Yield one item per decoded frame, in order: RGB where ``convert(index)``, else maybe None.

    Only PyAV can leave frames unconverted; decord always converts. Raises DecodeError
    when the stream yields no frame at all.
    """
    count = 0
    for frame in _decord_frames(path) if decoder == "decord" else _pyav_frames(path, convert):
        yield frame
        count += 1
    if count == 0:
        raise DecodeError(f"no decodable video frames in {path}")


def _decord_frames(path: Path) -> Iterator[np.ndarray]:
    served = 0
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        while True:
            try:
                frame = reader.next()
            except StopIteration:
                return
            yield frame.asnumpy()
            served += 1
    except _DECORD_ERRORS as exc:
        raise DecodeError(f"decord cannot decode {path} at frame {served}: {_reason(exc)}") from exc


def _pyav_frames(path: Path, convert: Callable[[int], bool]) -> Iterator[np.ndarray | None]:
    """Decode with PyAV, skipping packets the decoder rejects, as the ffmpeg tool does.

    A damaged packet near the end of a truncated file then costs one frame instead
    of the whole video.
    """
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            index = 0
            for packet in container.demux(stream):
                try:
                    decoded = packet.decode()
                except av.InvalidDataError:
                    continue
                for frame in decoded:
                    yield frame.to_ndarray(format="rgb24") if convert(index) else None
                    index += 1
    except av.FFmpegError as exc:
        raise DecodeError(f"PyAV cannot decode {path}: {_reason(exc)}") from exc


def _decord_batch(path: Path, unique: np.ndarray) -> np.ndarray:
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return reader.get_batch(unique.tolist()).asnumpy()


def _reason(exc: BaseException) -> str:
    """First line of a library error; decord appends multi-line log dumps."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
