"""Hostile inputs end as one-line errors or failure records, never as hangs or crashes.

A decoder that crawls or never ends is stopped by the decode watchdog; a frame size
over the limit is refused from the header; a CSV list that climbs out of its folder
is named. Each is injected here on tiny generated videos.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.videos import write_indexed_video
from vpipe.cli.app import app
from vpipe.data.csvlist import CsvList
from vpipe.errors import DatasetError, DecodeError, DecodeTimeoutError
from vpipe.video import decode
from vpipe.video.decode import DecodeLimits, iter_frames, probe_video, read_frames

runner = CliRunner()


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_indexed_video(tmp_path_factory.mktemp("clip") / "clip.avi", 20, "mpeg4")


def crawling_decoder(delay: float):
    """A stand-in for a decoder stuck on a hostile stream: a frame every ``delay`` s, forever."""

    def frames(path, convert, watchdog):
        while True:
            time.sleep(delay)
            yield np.zeros((64, 96, 3), np.uint8)

    return frames


def test_limits_scale_with_duration_and_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DecodeLimits().time_limit(10.0) == 60.0 + 10.0 * 10.0
    assert DecodeLimits().time_limit(None) == 60.0 + 10.0 * DecodeLimits.UNKNOWN_DURATION_S
    monkeypatch.setenv("VPIPE_DECODE_TIMEOUT", "2")
    monkeypatch.setenv("VPIPE_DECODE_TIMEOUT_PER_SECOND", "0.5")
    assert DecodeLimits.from_env().time_limit(4.0) == 4.0
    monkeypatch.setenv("VPIPE_DECODE_TIMEOUT", "soon")
    with pytest.raises(DecodeError, match="VPIPE_DECODE_TIMEOUT='soon' is not a number"):
        DecodeLimits.from_env()


@pytest.mark.parametrize("call", ["probe", "read", "iter"])
def test_a_decoder_that_never_ends_is_stopped_within_its_limit(
    clip: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    monkeypatch.setenv("VPIPE_DECODE_TIMEOUT", "0.4")
    monkeypatch.setenv("VPIPE_DECODE_TIMEOUT_PER_SECOND", "0.001")
    monkeypatch.setattr(decode, "_pyav_frames", crawling_decoder(0.02))
    start = time.monotonic()
    with pytest.raises(DecodeTimeoutError, match=f"decoding {clip} took over 0 s"):
        if call == "probe":
            probe_video(clip)
        elif call == "read":
            read_frames(clip, [10_000])
        else:
            for _ in iter_frames(clip):
                pass
    assert time.monotonic() - start < 2.0


def test_the_limit_counts_decoder_time_not_the_callers(clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A consumer that works between frames (TV-L1, a model) must not trip the watchdog."""
    monkeypatch.setenv("VPIPE_DECODE_TIMEOUT", "0.3")
    monkeypatch.setenv("VPIPE_DECODE_TIMEOUT_PER_SECOND", "0.001")
    count = 0
    for _ in iter_frames(clip):
        time.sleep(0.03)
        count += 1
    assert count == 20


def test_the_real_decoder_runs_under_the_watchdog(clip: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The limit reaches the decoders themselves: a limit too short for any read trips it.

    With a near-zero limit FFmpeg's own I/O timeout fires while opening; that too is a
    timeout naming the file, not a generic open error.
    """
    monkeypatch.setenv("VPIPE_DECODE_TIMEOUT", "1e-9")
    monkeypatch.setenv("VPIPE_DECODE_TIMEOUT_PER_SECOND", "1e-9")
    for decoder in ("pyav", "decord"):
        with pytest.raises(DecodeTimeoutError, match=str(clip)):
            probe_video(clip, decoder=decoder)


def test_the_watchdog_is_checked_in_the_packet_loop(clip: Path) -> None:
    """Checked per packet (and per decord frame), not only when a frame comes out."""

    class CountingWatchdog(decode._Watchdog):
        calls = 0

        def check(self) -> None:
            self.calls += 1
            super().check()

    for frames in (
        lambda watchdog: decode._pyav_frames(clip, lambda index: False, watchdog),
        lambda watchdog: decode._decord_frames(clip, watchdog),
    ):
        watchdog = CountingWatchdog(clip, limit_s=60.0)
        assert len(list(frames(watchdog))) == 20
        assert watchdog.calls >= 20


def test_frames_over_the_pixel_limit_are_refused_from_the_header(
    clip: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decode(*args, **kwargs):
        raise AssertionError("decoded a file whose header was refused")

    monkeypatch.setattr(decode, "_pyav_frames", no_decode)
    monkeypatch.setenv("VPIPE_MAX_FRAME_PIXELS", str(96 * 64 - 1))
    with pytest.raises(DecodeError, match=rf"{clip} declares 96x64 frames, over the 6,143-pixel limit"):
        probe_video(clip)
    monkeypatch.setenv("VPIPE_MAX_FRAME_PIXELS", str(96 * 64))
    monkeypatch.undo()
    assert probe_video(clip).num_frames == 20


def test_a_hanging_video_becomes_a_failure_record_and_the_rest_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "clips"
    for name in ("jump/a", "jump/b", "run/a", "run/hangs"):
        write_indexed_video(root / f"{name}.avi", 12, "mpeg4")
    real = decode._pyav_frames
    hanging = crawling_decoder(0.02)

    def decoder(path, convert, watchdog):
        return hanging(path, convert, watchdog) if path.stem == "hangs" else real(path, convert, watchdog)

    monkeypatch.setenv("VPIPE_DECODE_TIMEOUT", "0.5")
    monkeypatch.setattr(decode, "_pyav_frames", decoder)
    args = ["probe", "--dataset", "clips", "--adapter", "folder", "--root", root,
            "--workspace", tmp_path / "ws", "--workers", "0", "--json"]  # fmt: skip
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
    report = json.loads(result.stdout)["stages"][0]
    assert (report["done"], report["failed"]) == (3, 1)
    failures = pd.read_parquet(next((tmp_path / "ws").rglob("failures.parquet")))
    assert list(failures.video_id) == ["run/hangs"]
    assert "took over" in failures.error.iloc[0] and "hangs.avi" in failures.error.iloc[0]


def write_csv(folder: Path, rows: list[str]) -> Path:
    path = folder / "videos.csv"
    path.write_text("path,label\n" + "".join(f"{row}\n" for row in rows))
    return path


def test_csv_paths_that_climb_out_of_their_folder_are_named(tmp_path: Path) -> None:
    outside = write_indexed_video(tmp_path / "outside.avi", 4, "mpeg4")
    lists = tmp_path / "lists"
    inside = write_indexed_video(lists / "clips" / "a.avi", 4, "mpeg4")
    write_csv(lists, ["clips/a.avi,jump", "clips/../../outside.avi,run"])
    with pytest.raises(DatasetError, match=r"videos.csv:3: path 'clips/../../outside.avi' climbs out of"):
        CsvList().prepare(lists)
    write_csv(lists, ["clips/sub/../a.avi,jump", f"{outside},run"])
    entries = CsvList().prepare(lists)
    assert {entry.path for entry in entries} == {inside, outside}, "'..' inside the folder and absolute paths stay valid"


def test_symlinked_folders_inside_the_list_keep_working(tmp_path: Path) -> None:
    storage = tmp_path / "shared-storage"
    write_indexed_video(storage / "a.avi", 4, "mpeg4")
    lists = tmp_path / "lists"
    lists.mkdir()
    os.symlink(storage, lists / "clips")
    write_csv(lists, ["clips/a.avi,jump"])
    [entry] = CsvList().prepare(lists)
    assert entry.video_id == "clips/a" and entry.path == lists / "clips" / "a.avi"
