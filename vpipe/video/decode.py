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

Hostile files must become a :class:`DecodeError`, never a hang or a huge allocation.
Every decode runs under a watchdog (:class:`DecodeLimits`): the time spent inside the
decoder is bounded by a limit scaled to the video's duration, checked per demuxed
packet and per frame, so a stream that never ends, a header that sends the decoder
looping over garbage, or a decoder that crawls is stopped and named. The limit counts
decoder time only, not the time a caller spends between frames. PyAV's own I/O timeout
covers a read that blocks. What no in-process watchdog can stop is a single native call
that never returns; the per-packet checks make that the only case left. Frame sizes are
checked from the header before anything is decoded, so a file claiming a 60000-pixel
width fails at once instead of asking for gigabytes.

Decoders: ``"pyav"`` and ``"decord"`` do everything with that library;
``"auto"`` uses decord for random access where it is exact (falling back to
PyAV if decord cannot open or read the file) and PyAV for all sequential work,
so that frame counts and frame numbers come from one decoder. Both run
single-threaded because many decodes run at once in worker processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import av
import decord
import numpy as np

from vpipe.errors import DecodeError, DecodeTimeoutError

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


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on one video's decode; read from the environment so dask workers share them.

    ``VPIPE_DECODE_TIMEOUT`` (seconds, default 60) plus ``VPIPE_DECODE_TIMEOUT_PER_SECOND``
    (default 10) per second of video bound the decoder time of one call. Ten seconds per
    second of video is a decode at a tenth of real time, far below what one CPU core
    decodes even for 4K HEVC, so only a broken or hostile file reaches it. A file whose
    header gives no duration is allowed ten minutes of video. ``VPIPE_MAX_FRAME_PIXELS``
    (default 8192 x 8192, twice 8K UHD) bounds width x height: one RGB frame of that size
    is already 200 MB.
    """

    timeout_s: float = 60.0
    timeout_per_video_s: float = 10.0
    max_pixels: int = 8192 * 8192

    #: Duration assumed when a header gives none.
    UNKNOWN_DURATION_S = 600.0

    @classmethod
    def from_env(cls) -> DecodeLimits:
        def number(name: str, default: float) -> float:
            text = os.environ.get(name)
            if text is None:
                return default
            try:
                value = float(text)
            except ValueError:
                raise DecodeError(f"{name}={text!r} is not a number") from None
            if value <= 0:
                raise DecodeError(f"{name}={text!r} must be positive")
            return value

        return cls(
            timeout_s=number("VPIPE_DECODE_TIMEOUT", cls.timeout_s),
            timeout_per_video_s=number("VPIPE_DECODE_TIMEOUT_PER_SECOND", cls.timeout_per_video_s),
            max_pixels=int(number("VPIPE_MAX_FRAME_PIXELS", cls.max_pixels)),
        )

    def time_limit(self, duration_s: float | None) -> float:
        """Seconds of decoder time allowed for a video lasting ``duration_s``."""
        duration = duration_s if duration_s and duration_s > 0 else self.UNKNOWN_DURATION_S
        return self.timeout_s + self.timeout_per_video_s * duration


class _Watchdog:
    """Counts time spent inside a decoder (not in its caller) and stops it past a limit."""

    def __init__(self, path: Path, limit_s: float):
        self.path = path
        self.limit_s = limit_s
        self._spent = 0.0
        self._since = time.monotonic()

    def check(self) -> None:
        if self._spent + time.monotonic() - self._since > self.limit_s:
            raise DecodeTimeoutError(
                f"decoding {self.path} took over {self.limit_s:.0f} s, the limit for its length; "
                f"the file is damaged or hostile (raise VPIPE_DECODE_TIMEOUT if it is not)"
            )

    def pause(self) -> None:
        """The caller has the frame: its time is not the decoder's."""
        self.check()
        self._spent += time.monotonic() - self._since

    def resume(self) -> None:
        self._since = time.monotonic()


class _Header(NamedTuple):
    codec: str
    fps: float
    container: frozenset[str]
    duration_s: float | None


def probe_video(path: str | Path, *, decoder: str = "auto") -> VideoInfo:
    """Describe a video, counting its frames by decoding all of them.

    ``"auto"`` counts with PyAV, the decoder it reads sequentially with, so the count
    is exactly what :func:`read_frames` and :func:`iter_frames` can deliver.
    """
    path = _check_file(path, decoder)
    header = _read_header(path)
    num_frames, shape = 0, (0, 0, 3)
    with closing(_frames(path, decoder, lambda index: index == 0, header.duration_s)) as frames:
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
    return _read_sequential(path, unique, decoder, header.duration_s)[inverse]


def iter_frames(path: str | Path, *, decoder: str = "auto") -> Iterator[np.ndarray]:
    """Yield every frame in order as (H, W, 3) uint8 RGB.

    The file is checked before the iterator is returned, so a missing or non-video
    file fails at the call rather than at the first ``next()``.
    """
    path = _check_file(path, decoder)
    header = _read_header(path)
    return _frames(path, decoder, lambda index: True, header.duration_s)


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
    """Open the container with PyAV to reject non-videos and absurd frame sizes early.

    decord happily opens a text file and only fails later, with noise on stderr; a
    header read costs about a millisecond and gives one clear error for every decoder.
    """
    limits = DecodeLimits.from_env()
    try:
        with av.open(str(path), timeout=limits.timeout_s) as container:
            if not container.streams.video:
                raise DecodeError(f"no video stream in {path}")
            stream = container.streams.video[0]
            _check_frame_size(path, stream.codec_context.width, stream.codec_context.height, limits)
            rate = stream.average_rate or stream.guessed_rate or 0
            return _Header(
                stream.codec_context.name,
                float(rate),
                frozenset(container.format.name.split(",")),
                _duration_s(container, stream, float(rate)),
            )
    except av.ExitError as exc:
        raise _blocked(path, limits.timeout_s) from exc
    except av.FFmpegError as exc:
        raise DecodeError(f"cannot open video {path}: {_reason(exc)}") from exc


def _check_frame_size(path: Path, width: int, height: int, limits: DecodeLimits) -> None:
    if width <= 0 or height <= 0:
        raise DecodeError(f"video {path} declares no frame size ({width}x{height})")
    if width * height > limits.max_pixels:
        raise DecodeError(
            f"video {path} declares {width}x{height} frames, over the {limits.max_pixels:,}-pixel "
            f"limit (raise VPIPE_MAX_FRAME_PIXELS if the file is genuine)"
        )


def _duration_s(container: av.container.InputContainer, stream: av.video.stream.VideoStream, fps: float) -> float | None:
    """The header's duration, from the container, the stream, or frames / fps; None if absent."""
    if container.duration:
        return container.duration / av.time_base
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if stream.frames and fps > 0:
        return stream.frames / fps
    return None


def _random_access_is_exact(header: _Header) -> bool:
    return header.codec in _RANDOM_ACCESS_CODECS and bool(
        header.container & _RANDOM_ACCESS_CONTAINERS
    )


def _read_sequential(path: Path, unique: np.ndarray, decoder: str, duration_s: float | None) -> np.ndarray:
    """Decode from the start up to ``unique[-1]``, keeping only the frames in ``unique``.

    Memory stays at one frame per distinct index, whatever the length of the video.
    """
    needed = set(unique.tolist())
    out: np.ndarray | None = None
    kept = decoded = 0
    with closing(_frames(path, decoder, needed.__contains__, duration_s)) as frames:
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
    path: Path, decoder: str, convert: Callable[[int], bool], duration_s: float | None
) -> Iterator[np.ndarray | None]:
    """Yield one item per decoded frame, in order: RGB where ``convert(index)``, else maybe None.

    Only PyAV can leave frames unconverted; decord always converts. Raises DecodeError
    when the stream yields no frame at all, and DecodeTimeoutError when the decoder's
    time exceeds the limit for ``duration_s``.
    """
    watchdog = _Watchdog(path, DecodeLimits.from_env().time_limit(duration_s))
    decoded = _decord_frames(path, watchdog) if decoder == "decord" else _pyav_frames(path, convert, watchdog)
    count = 0
    with closing(decoded):
        for frame in decoded:
            watchdog.pause()
            yield frame
            watchdog.resume()
            count += 1
    if count == 0:
        raise DecodeError(f"no decodable video frames in {path}")


def _decord_frames(path: Path, watchdog: _Watchdog) -> Iterator[np.ndarray]:
    served = 0
    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
        while True:
            watchdog.check()
            try:
                frame = reader.next()
            except StopIteration:
                return
            yield frame.asnumpy()
            served += 1
    except _DECORD_ERRORS as exc:
        raise DecodeError(f"decord cannot decode {path} at frame {served}: {_reason(exc)}") from exc


def _pyav_frames(
    path: Path, convert: Callable[[int], bool], watchdog: _Watchdog
) -> Iterator[np.ndarray | None]:
    """Decode with PyAV, skipping packets the decoder rejects, as the ffmpeg tool does.

    A damaged packet near the end of a truncated file then costs one frame instead
    of the whole video; the watchdog is checked per packet, so a stream of rejected
    packets cannot loop unbounded either.
    """
    try:
        with av.open(str(path), timeout=watchdog.limit_s) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            index = 0
            for packet in container.demux(stream):
                watchdog.check()
                try:
                    decoded = packet.decode()
                except av.InvalidDataError:
                    continue
                for frame in decoded:
                    yield frame.to_ndarray(format="rgb24") if convert(index) else None
                    index += 1
    except av.ExitError as exc:
        raise _blocked(path, watchdog.limit_s) from exc
    except av.FFmpegError as exc:
        raise DecodeError(f"PyAV cannot decode {path}: {_reason(exc)}") from exc


def _decord_batch(path: Path, unique: np.ndarray) -> np.ndarray:
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return reader.get_batch(unique.tolist()).asnumpy()


def _blocked(path: Path, limit_s: float) -> DecodeTimeoutError:
    """PyAV's I/O timeout fired: FFmpeg gave up on a read that blocked past the limit."""
    return DecodeTimeoutError(f"reading {path} blocked for over {limit_s:g} s; the storage or the file is stuck")


def _reason(exc: BaseException) -> str:
    """First line of a library error; decord appends multi-line log dumps."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
