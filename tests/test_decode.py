"""Frame accuracy and error handling of vpipe.video.decode.

Truth comes from the pixels: every fixture frame shows its own index (tests/videos.py),
so each returned frame is checked against the index that was asked for.
"""

from __future__ import annotations

import re
from pathlib import Path

import av
import decord
import numpy as np
import pytest

from tests.videos import (
    SUFFIX,
    damage_b_frame,
    frame_index,
    index_frame,
    truncate_after_prefix,
    write_indexed_video,
)
from vpipe.errors import DecodeError
from vpipe.video import decode
from vpipe.video.decode import DECODERS, VideoInfo, iter_frames, probe_video, read_frames

NUM_FRAMES = 150
HEIGHT, WIDTH = 64, 96
#: unsorted, repeated, both ends, and a looped tail-then-head run as in short-video sampling.
INDICES = [120, 77, 3, 149, 0, 60, 60, 148, 5, 77, 1, 146, 147, 148, 149, 0, 1, 2]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    return {
        codec: write_indexed_video(root / f"indexed{suffix}", NUM_FRAMES, codec, HEIGHT, WIDTH)
        for codec, suffix in SUFFIX.items()
    }


@pytest.fixture(scope="module")
def truncated_avi(
    videos: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, int]:
    target = tmp_path_factory.mktemp("truncated") / "truncated.avi"
    return target, truncate_after_prefix(videos["mpeg4"], target, max_frames=NUM_FRAMES // 2)


def indices_of(frames: np.ndarray) -> list[int]:
    return [frame_index(frame) for frame in frames]


def decord_batch_indices(path: Path, indices: list[int]) -> list[int]:
    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    return indices_of(reader.get_batch(indices).asnumpy())


def test_index_pattern_round_trips_without_a_codec() -> None:
    assert [frame_index(index_frame(i)) for i in range(256)] == list(range(256))


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("codec", SUFFIX)
def test_probe_reports_what_decodes(videos: dict[str, Path], codec: str, decoder: str) -> None:
    info = probe_video(videos[codec], decoder=decoder)
    assert info == VideoInfo(NUM_FRAMES, 25.0, WIDTH, HEIGHT, codec)


@pytest.mark.parametrize("with_info", [False, True], ids=["sequential", "with-info"])
@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("codec", SUFFIX)
def test_read_frames_returns_exactly_the_requested_frames(
    videos: dict[str, Path], codec: str, decoder: str, with_info: bool
) -> None:
    info = probe_video(videos[codec], decoder=decoder) if with_info else None
    frames = read_frames(videos[codec], INDICES, decoder=decoder, info=info)
    assert frames.shape == (len(INDICES), HEIGHT, WIDTH, 3)
    assert frames.dtype == np.uint8
    assert indices_of(frames) == INDICES


@pytest.mark.parametrize("decoder", ["auto", "decord"])
def test_random_access_path_is_exact_on_every_frame(videos: dict[str, Path], decoder: str) -> None:
    path = videos["h264"]
    order = np.random.default_rng(0).permutation(NUM_FRAMES).tolist()
    frames = read_frames(path, order, decoder=decoder, info=probe_video(path, decoder=decoder))
    assert indices_of(frames) == order


def test_random_access_only_where_decord_seeks_exactly(
    videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_random_access(path: Path, unique: np.ndarray) -> np.ndarray:
        raise AssertionError(f"random access used on {path}")

    monkeypatch.setattr(decode, "_decord_batch", no_random_access)
    avi = videos["mpeg4"]
    assert indices_of(read_frames(avi, [90, 10], info=probe_video(avi))) == [90, 10]
    with pytest.raises(AssertionError, match="random access used"):
        read_frames(videos["h264"], [90, 10], info=probe_video(videos["h264"]))


def test_decord_random_access_is_wrong_on_mpeg4_avi(videos: dict[str, Path]) -> None:
    """Why the sequential path exists: decord mis-seeks on the codec of UCF101 and HMDB51."""
    assert decord_batch_indices(videos["h264"], INDICES) == INDICES
    got = decord_batch_indices(videos["mpeg4"], INDICES)
    if got == INDICES:
        pytest.skip("this decord seeks exactly on MPEG-4 AVI; sequential reads are a safeguard")
    # Silent corruption: real frames of the video, no error, just not the ones asked for.
    assert all(0 <= index < NUM_FRAMES for index in got)
    assert indices_of(read_frames(videos["mpeg4"], INDICES, decoder="decord")) == INDICES


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("codec", SUFFIX)
def test_iter_frames_yields_every_frame_in_order(
    videos: dict[str, Path], codec: str, decoder: str
) -> None:
    got = [frame_index(frame) for frame in iter_frames(videos[codec], decoder=decoder)]
    assert got == list(range(NUM_FRAMES))


@pytest.mark.parametrize("decoder", DECODERS)
def test_truncated_avi_counts_frames_that_decode_not_the_header(
    truncated_avi: tuple[Path, int], decoder: str
) -> None:
    path, complete = truncated_avi
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == NUM_FRAMES, "the header should still lie"
    assert 0 < complete < NUM_FRAMES
    info = probe_video(path, decoder=decoder)
    assert info.num_frames == complete
    wanted = list(range(complete))[::-1]
    assert indices_of(read_frames(path, wanted, decoder=decoder, info=info)) == wanted
    with pytest.raises(DecodeError, match=f"{complete}.*{re.escape(str(path))}"):
        read_frames(path, [complete], decoder=decoder)
    with pytest.raises(DecodeError, match=f"{complete}.*{re.escape(str(path))}"):
        read_frames(path, [0, complete], decoder=decoder, info=info)


def test_a_damaged_packet_costs_its_frame_not_the_video(
    videos: dict[str, Path], tmp_path: Path
) -> None:
    """PyAV drops the damaged frame and goes on; decord gives up on such files."""
    path = tmp_path / "damaged.avi"
    lost = damage_b_frame(videos["mpeg4"], path)
    expected = [i for i in range(NUM_FRAMES) if i != lost]
    for decoder in ("pyav", "auto"):
        assert probe_video(path, decoder=decoder).num_frames == NUM_FRAMES - 1, decoder
        assert indices_of(np.stack(list(iter_frames(path, decoder=decoder)))) == expected, decoder
        neighbours = read_frames(path, [lost - 1, lost], decoder=decoder)
        assert indices_of(neighbours) == [lost - 1, lost + 1]


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("bad_index", [NUM_FRAMES, 10_000, -1])
def test_out_of_range_index_names_path_and_index(
    videos: dict[str, Path], decoder: str, bad_index: int
) -> None:
    path = videos["mpeg4"]
    with pytest.raises(DecodeError) as raised:
        read_frames(path, [5, bad_index], decoder=decoder)
    assert str(path) in str(raised.value)
    assert str(bad_index) in str(raised.value)


class FailingReader:
    """A decord reader that breaks after ``fail_at`` frames, as decord does on damaged streams."""

    fail_at = 40

    def __init__(self, *args: object, **kwargs: object) -> None:
        self._reader = REAL_VIDEO_READER(*args, **kwargs)
        self._served = 0

    def next(self) -> decord.ndarray.NDArray:
        if self._served == self.fail_at:
            raise decord.DECORDError("simulated failure inside decord")
        self._served += 1
        return self._reader.next()


REAL_VIDEO_READER = decord.VideoReader


def test_decord_failing_part_way_is_a_decode_error_and_auto_does_not_need_it(
    videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decord, "VideoReader", FailingReader)
    path = videos["mpeg4"]
    stopped = re.escape(str(path)) + f".*frame {FailingReader.fail_at}"
    with pytest.raises(DecodeError, match=stopped):
        probe_video(path, decoder="decord")
    with pytest.raises(DecodeError, match=stopped):
        read_frames(path, [100], decoder="decord")
    assert probe_video(path).num_frames == NUM_FRAMES
    wanted = [100, 39, 40, 41]
    assert indices_of(read_frames(path, wanted, info=probe_video(path))) == wanted
    assert indices_of(np.stack(list(iter_frames(path)))) == list(range(NUM_FRAMES))


def test_auto_falls_back_when_decord_cannot_open(
    videos: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated: decord cannot open this file")

    monkeypatch.setattr(decord, "VideoReader", refuse)
    path = videos["h264"]
    info = probe_video(path)
    assert info.num_frames == NUM_FRAMES
    assert indices_of(read_frames(path, INDICES, info=info)) == INDICES
    with pytest.raises(DecodeError, match=re.escape(str(path))):
        read_frames(path, INDICES, decoder="decord", info=info)


def _zero_bytes(path: Path, source: Path) -> None:
    path.write_bytes(b"")


def _truncated_header(path: Path, source: Path) -> None:
    path.write_bytes(source.read_bytes()[:600])


def _garbage_payload(path: Path, source: Path) -> None:
    """A valid AVI header followed by noise: the container opens, no frame decodes."""
    with av.open(str(source)) as container:
        first_packet = next(p for p in container.demux(video=0) if p.size)
    noise = np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes()
    path.write_bytes(source.read_bytes()[: first_packet.pos] + noise)


def _text(path: Path, source: Path) -> None:
    path.write_text("this is a text file, not a video\n" * 50)


def _missing(path: Path, source: Path) -> None:
    """Leave the path absent."""


BROKEN = {
    "zero-bytes": _zero_bytes,
    "truncated-header": _truncated_header,
    "garbage-payload": _garbage_payload,
    "text": _text,
    "missing": _missing,
}


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("kind", BROKEN)
def test_unreadable_files_raise_decode_error_naming_the_path(
    videos: dict[str, Path], tmp_path: Path, kind: str, decoder: str
) -> None:
    path = tmp_path / f"{kind}.avi"
    BROKEN[kind](path, videos["mpeg4"])
    calls = {
        "probe_video": lambda: probe_video(path, decoder=decoder),
        "read_frames": lambda: read_frames(path, [0], decoder=decoder),
        "iter_frames": lambda: list(iter_frames(path, decoder=decoder)),
    }
    for name, call in calls.items():
        with pytest.raises(DecodeError) as raised:
            call()
        assert str(path) in str(raised.value), name
        assert "\n" not in str(raised.value), name


def test_unknown_decoder_is_rejected(videos: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="unknown decoder"):
        probe_video(videos["mpeg4"], decoder="opencv")
