"""The flow stage against flow computed independently from the plan.

References decode with PyAV directly, crop with numpy slicing and flips, take the
frame pairs from the conventions documented in ``flow_pair`` and
``flow_stack_indices`` (re-derived here, not imported) and quantize with numpy.
Videos are 48x64, so the plan's short-side resize (48) is the identity and a crop
is an exact slice: the cached codes must match the reference to the rounding step.
TV-L1 runs with one scale and few iterations, which keeps each test to seconds
while still resolving a two-pixel motion's direction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import av
import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import vpipe.flow.compute
from vpipe import catalog
from vpipe.errors import ConfigError
from vpipe.flow.tvl1 import OPENCV_DEFAULTS, tvl1
from vpipe.pipeline.executor import InProcessExecutor, Outcome
from vpipe.pipeline.fingerprint import file_fingerprint, fingerprint
from vpipe.pipeline.runner import run_stage
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.dataset import configure_dataset
from vpipe.stages.planned_videos import plan_jobs
from tests.fingerprint_reference import clip_signature
from vpipe.stages.flow import FlowStage
from vpipe.stages.plan import PlanStage
from vpipe.stages.probe import ProbeStage
from vpipe.store.index import read_index
from vpipe.store.reader import FeatureSet
from vpipe.video.plan import sampler_config
from vpipe.video.write import write_video

#: Cheap TV-L1 settings: enough to get the sign of a 2 px/frame motion right.
FAST_TVL1: dict[str, int] = {"nscales": 1, "warps": 1, "inner_iterations": 5, "outer_iterations": 1}
HEIGHT, WIDTH = 48, 64
#: The plan geometry of the tests: need 8 frames, 32x32 crops of a 48-pixel short side.
TINY_PLAN: dict[str, object] = {"need": 8, "size": 32, "short_side": 48}


def moving_texture(
    num_frames: int, *, dx: int = 2, height: int = HEIGHT, width: int = WIDTH, seed: int = 0
) -> np.ndarray:
    """A smooth random texture translating right by ``dx`` pixels per frame, (T, H, W, 3).

    Smoothness (a box blur of noise) keeps the motion estimable by a coarse TV-L1 and
    survives lossy coding; the true flow is (+dx, 0) everywhere.
    """
    rng = np.random.default_rng(seed)
    span = width + dx * num_frames + 8
    noise = rng.uniform(0, 255, (height + 4, span + 4, 3))
    kernel = np.ones(5) / 5
    smooth = np.apply_along_axis(np.convolve, 0, noise, kernel, mode="valid")
    smooth = np.apply_along_axis(np.convolve, 1, smooth, kernel, mode="valid")
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 220 + 15
    start = dx * num_frames
    frames = [smooth[:, start - dx * t : start - dx * t + width] for t in range(num_frames)]
    return np.stack(frames).round().astype(np.uint8)


def build_workspace(
    tmp_path: Path,
    videos: dict[str, np.ndarray],
    *,
    size: tuple[int, int] = (HEIGHT, WIDTH),
    **plan_options: object,
) -> DatasetWorkspace:
    """Write ``videos`` (``"class/name" -> frames``) as a folder dataset, probe and plan it.

    Folder datasets send every fifth video of a class to ``test``; with up to four
    videos per class every video is ``train`` and gets ``train_views`` views.
    """
    root = tmp_path / "clips"
    for video_id, frames in videos.items():
        assert frames.shape[1:3] == size
        write_video(root / f"{video_id}.avi", frames)
    ws = DatasetWorkspace(tmp_path / "ws", "clips")
    config = configure_dataset(ws, adapter="folder", root=root)
    executor = InProcessExecutor()
    probed = run_stage(ProbeStage(ws, config), executor, progress=False)
    assert probed.failed == 0
    options = {**TINY_PLAN, **plan_options}
    run_stage(PlanStage(ws, sampler_config("li3d", **options)), executor, progress=False)
    return ws


def plan_rows(ws: DatasetWorkspace, plan: str = "li3d") -> pd.DataFrame:
    return pd.read_parquet(ws.plan_path(plan)).sort_values(["video_id", "clip", "view"]).reset_index(drop=True)


def manifest(ws: DatasetWorkspace) -> pd.DataFrame:
    return pd.read_parquet(ws.manifest_path).set_index("video_id")


def decode_all(path: str | Path) -> np.ndarray:
    """Every frame of ``path`` as (T, H, W, 3) RGB, straight from PyAV (not vpipe's decoder)."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def slice_crop(frames: np.ndarray, row: pd.Series) -> np.ndarray:
    """The plan row's box and flip on frames already at the resize size."""
    assert frames.shape[1:3] == (row.resize_h, row.resize_w), "reference only slices"
    out = frames[:, row.crop_y : row.crop_y + row.crop_h, row.crop_x : row.crop_x + row.crop_w]
    return np.ascontiguousarray(out[:, :, ::-1] if row.flip else out)


def pair_for(frame: int, num_frames: int) -> tuple[int, int]:
    """The documented pair convention: (f, f+1), and (f-1, f) for the last frame."""
    if frame + 1 < num_frames:
        return frame, frame + 1
    return max(frame - 1, 0), frame


def stack_rows(centers: np.ndarray, num_frames: int, stack: int) -> np.ndarray:
    """``c - L//2 .. c - L//2 + L`` per centre, shifted (not clamped) to stay in the video."""
    rows = []
    for c in centers:
        first = min(max(int(c) - stack // 2, 0), max(num_frames - 1 - stack, 0))
        rows.append([min(first + j, num_frames - 1) for j in range(stack + 1)])
    return np.array(rows, dtype=np.int64)


def quantize_reference(flow: np.ndarray, bound: float = 20.0) -> np.ndarray:
    """denseflow's uint8 codes: round(255 (v + bound) / (2 bound)), clipped to 0..255."""
    return np.clip(np.round(255.0 * (flow.astype(np.float64) + bound) / (2 * bound)), 0, 255).astype(np.uint8)


def reference_flow(frames: np.ndarray, pairs: np.ndarray, row: pd.Series) -> np.ndarray:
    """uint8 flow for ``pairs`` (..., 2) of frame indices, on the row's crop."""
    flat = pairs.reshape(-1, 2)
    prev = slice_crop(frames[flat[:, 0]], row)
    nxt = slice_crop(frames[flat[:, 1]], row)
    fields = tvl1(torch.from_numpy(prev), torch.from_numpy(nxt), **FAST_TVL1).numpy()
    return quantize_reference(fields).reshape(*pairs.shape[:-1], *fields.shape[1:])


def assert_codes_match(cached: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to one code where a value sits on a rounding boundary (float noise)."""
    assert cached.dtype == np.uint8 and cached.shape == expected.shape
    diff = np.abs(cached.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.01


class Interrupting(InProcessExecutor):
    """Raises KeyboardInterrupt (a user's Ctrl-C) after ``after`` outcomes were handed out."""

    def __init__(self, after: int):
        self.after = after

    def map(self, fn: Callable, items, **kwargs) -> Iterator[Outcome]:
        for n, outcome in enumerate(super().map(fn, items, **kwargs)):
            if n == self.after:
                raise KeyboardInterrupt
            yield outcome


def assert_clean_artifact(directory: Path, expected_keys: set[tuple[str, int, int]]) -> pd.DataFrame:
    """One index row per planned (video, clip, view), every shard readable, nothing stray."""
    index = read_index(directory)
    keys = list(zip(index["video_id"], index["clip"].astype(int), index["view"].astype(int)))
    assert len(keys) == len(set(keys)), "an index key appears twice"
    assert set(keys) == expected_keys
    shards = {p.name for p in directory.glob("*.h5")}
    assert shards == set(index["shard"]), "orphan shards left, or indexed shards missing"
    assert not list(directory.glob(".*.tmp")) and not list(directory.glob("*.tmp"))
    for shard, rows in index.groupby("shard"):
        with h5py.File(directory / shard, "r") as handle:
            stored = list(zip(handle["rows/video_id"].asstr()[:], handle["rows/clip"][:], handle["rows/view"][:]))
        for r in rows.itertuples():
            assert stored[r.row] == (r.video_id, r.clip, r.view), f"{shard} row {r.row} holds another clip"
    return index


def planned_keys(ws: DatasetWorkspace, videos: set[str] | None = None) -> set[tuple[str, int, int]]:
    plan = plan_rows(ws)
    return {
        (r.video_id, int(r.clip), int(r.view)) for r in plan.itertuples() if videos is None or r.video_id in videos
    }


def test_cached_flow_equals_tvl1_of_the_cropped_pairs(tmp_path: Path) -> None:
    """Every (clip, view) holds quantize(tvl1(crop(prev), crop(next))) for its frames.

    An 8-frame video with need 8 puts the last frame in every clip, so the
    (f-1, f) convention for the final frame is exercised; two clips of a 14-frame
    video check that rows do not mix clips up.
    """
    videos = {"a/eight": moving_texture(8, seed=1), "b/fourteen": moving_texture(14, dx=1, seed=2)}
    ws = build_workspace(tmp_path, videos, clips=2, train_views=2, flip_prob=1.0)
    report = run_stage(FlowStage(ws, tvl1_params=FAST_TVL1), InProcessExecutor(), progress=False)
    assert (report.done, report.failed) == (2, 0)

    flow = FeatureSet.open(ws.flow_dir("li3d"))
    assert flow.layers == ["flow"]
    info = manifest(ws)
    checked_last_frame = False
    for row in plan_rows(ws).itertuples():
        n = int(info.loc[row.video_id, "num_frames"])
        frames = decode_all(info.loc[row.video_id, "path"])
        assert len(frames) == n
        pairs = np.array([pair_for(f, n) for f in row.frames])
        checked_last_frame |= (n - 1) in row.frames
        cached = flow.clips(row.video_id, view=row.view, layer="flow")[row.clip]
        assert cached.shape == (8, 2, 32, 32)
        assert_codes_match(cached, reference_flow(frames, pairs, row))
    assert checked_last_frame


def test_quantization_is_denseflow_convention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Known flow values through the stage come back as round(255 (v + 20) / 40).

    TV-L1 is replaced by a stub returning fixed values (including ties and values
    beyond the bound), so the codes test the encoding alone.
    """
    values = np.array([-25.0, -20.0, -10.0, -0.05, 0.0, 0.0784313725, 3.3, 19.9, 20.0, 31.0], np.float32)

    def fixed_flow(prev: torch.Tensor, nxt: torch.Tensor, **params: object) -> torch.Tensor:
        n, h, w = prev.shape[:3]
        grid = np.resize(values, (2, h, w)).astype(np.float32)
        return torch.from_numpy(np.broadcast_to(grid, (n, 2, h, w)).copy())

    monkeypatch.setattr(vpipe.flow.compute, "tvl1", fixed_flow)
    ws = build_workspace(tmp_path, {"a/v": moving_texture(10)})
    run_stage(FlowStage(ws), InProcessExecutor(), progress=False)
    cached = FeatureSet.open(ws.flow_dir("li3d")).clips("a/v", view=0, layer="flow")[0]
    expected = quantize_reference(np.resize(values, (2, 32, 32)))
    assert cached.shape == (8, 2, 32, 32) and cached.dtype == np.uint8
    np.testing.assert_array_equal(cached, np.broadcast_to(expected, cached.shape))
    assert set(np.unique(cached)) >= {0, 127, 128, 255}


def test_looped_short_video_computes_each_pair_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """5 frames with need 8: frames repeat in a clip and clips repeat, yet each
    (frame pair, crop) is solved once and every clip still stores 8 fields."""
    solved: list[tuple[bytes, bytes]] = []

    def counting_tvl1(prev: torch.Tensor, nxt: torch.Tensor, **params: object) -> torch.Tensor:
        solved.extend((p.numpy().tobytes(), q.numpy().tobytes()) for p, q in zip(prev, nxt))
        return tvl1(prev, nxt, **params)

    monkeypatch.setattr(vpipe.flow.compute, "tvl1", counting_tvl1)
    ws = build_workspace(tmp_path, {"a/short": moving_texture(5)}, clips=2, train_views=2)
    run_stage(FlowStage(ws, tvl1_params=FAST_TVL1, pairs_per_batch=4), InProcessExecutor(), progress=False)

    plan = plan_rows(ws)
    assert plan["frames"].map(len).eq(8).all() and plan["frames"].map(lambda f: len(set(f)) < 8).all()
    expected = {
        (pair, (r.resize_h, r.resize_w, r.crop_y, r.crop_x, r.crop_h, r.crop_w, r.flip))
        for r in plan.itertuples()
        for pair in (pair_for(f, 5) for f in r.frames)
    }
    assert len(solved) == len(set(solved)), "a pair was solved twice"
    assert len(solved) == len(expected)

    flow = FeatureSet.open(ws.flow_dir("li3d"))
    frames = decode_all(manifest(ws).loc["a/short", "path"])
    for row in plan.itertuples():
        cached = flow.clips("a/short", view=row.view, layer="flow")[row.clip]
        pairs = np.array([pair_for(f, 5) for f in row.frames])
        assert_codes_match(cached, reference_flow(frames, pairs, row))


def test_stack_mode_stores_l_fields_around_each_frame(tmp_path: Path) -> None:
    """stack=4: (T, 4, 2, h, w), field j from (f_j, f_j+1) of the shifted window."""
    ws = build_workspace(tmp_path, {"a/v": moving_texture(10, seed=3)})
    run_stage(FlowStage(ws, stack=4, tvl1_params=FAST_TVL1), InProcessExecutor(), progress=False)
    row = plan_rows(ws).iloc[0]
    cached = FeatureSet.open(ws.flow_dir("li3d")).clips("a/v", view=0, layer="flow")[0]
    assert cached.shape == (8, 4, 2, 32, 32) and cached.dtype == np.uint8
    windows = stack_rows(np.asarray(row.frames), 10, 4)
    assert windows.min() >= 0 and windows.max() <= 9
    pairs = np.stack([windows[:, :-1], windows[:, 1:]], axis=-1)
    assert_codes_match(cached, reference_flow(decode_all(manifest(ws).loc["a/v", "path"]), pairs, row))


def test_flipped_view_flips_the_horizontal_flow(tmp_path: Path) -> None:
    """A texture moving right gives +x flow; the plan's flipped view stores -x flow."""
    ws = build_workspace(tmp_path, {"a/right": moving_texture(12, dx=2, seed=4)}, train_views=2, flip_prob=1.0)
    run_stage(FlowStage(ws, tvl1_params=FAST_TVL1), InProcessExecutor(), progress=False)
    plan = plan_rows(ws)
    assert list(plan["flip"]) == [False, True]
    flow = FeatureSet.open(ws.flow_dir("li3d"))
    mean = {}
    for view in (0, 1):
        codes = flow.clips("a/right", view=view, layer="flow")[0].astype(np.float64)
        pixels = codes * 40.0 / 255.0 - 20.0
        mean[view] = pixels[:, 0].mean(), pixels[:, 1].mean()
    assert mean[0][0] > 0.3 and mean[1][0] < -0.3
    assert abs(mean[0][1]) < 0.2 and abs(mean[1][1]) < 0.2


def test_missing_and_truncated_videos_fail_alone(tmp_path: Path) -> None:
    """Videos deleted or cut short after planning are failures of ``flow``; others finish."""
    videos = {f"a/v{k}": moving_texture(12, seed=k) for k in range(3)}
    ws = build_workspace(tmp_path, videos)
    paths = manifest(ws)["path"]
    Path(paths["a/v0"]).unlink()
    good = Path(paths["a/v1"]).read_bytes()
    Path(paths["a/v1"]).write_bytes(good[: len(good) // 6])

    report = run_stage(FlowStage(ws, tvl1_params=FAST_TVL1, videos_per_task=3), InProcessExecutor(), progress=False)
    assert (report.total, report.done, report.failed) == (3, 1, 2)
    failures = pd.read_parquet(ws.failures_path)
    assert set(failures["video_id"]) == {"a/v0", "a/v1"}
    assert set(failures["stage"]) == {"flow"}
    assert failures["error"].str.len().gt(0).all()
    assert_clean_artifact(ws.flow_dir("li3d"), planned_keys(ws, {"a/v2"}))


def test_interrupted_run_resumes_with_the_rest(tmp_path: Path) -> None:
    """Ctrl-C mid-task: the rerun computes only unrecorded videos, and the index is whole.

    Tasks of two videos with an interrupt after the first outcome leave a shard
    holding a video with no record; its rerun must not produce a duplicate row.
    """
    videos = {f"{c}/v{k}": moving_texture(10, seed=k + 3 * i) for i, c in enumerate("ab") for k in range(2)}
    ws = build_workspace(tmp_path, videos, train_views=2)

    def stage() -> FlowStage:
        return FlowStage(ws, tvl1_params=FAST_TVL1, videos_per_task=2)

    with pytest.raises(KeyboardInterrupt):
        run_stage(stage(), Interrupting(after=1), progress=False)
    resumed = run_stage(stage(), InProcessExecutor(), progress=False)
    assert (resumed.computed, resumed.up_to_date, resumed.done) == (3, 1, 4)
    index = assert_clean_artifact(ws.flow_dir("li3d"), planned_keys(ws))
    flow = FeatureSet.open(ws.flow_dir("li3d"))
    info = manifest(ws)
    for row in plan_rows(ws).itertuples():
        n = int(info.loc[row.video_id, "num_frames"])
        pairs = np.array([pair_for(f, n) for f in row.frames])
        cached = flow.clips(row.video_id, view=row.view, layer="flow")[row.clip]
        assert_codes_match(cached, reference_flow(decode_all(info.loc[row.video_id, "path"]), pairs, row))

    mtime = (ws.flow_dir("li3d") / "index.parquet").stat().st_mtime_ns
    again = run_stage(stage(), InProcessExecutor(), progress=False)
    assert (again.computed, again.done) == (0, 4)
    assert (ws.flow_dir("li3d") / "index.parquet").stat().st_mtime_ns == mtime
    assert read_index(ws.flow_dir("li3d")).equals(index)


def flow_item_fingerprints(ws: DatasetWorkspace, **params: object) -> dict[str, str]:
    return {item.key: item.fingerprint for item in FlowStage(ws, tvl1_params=params).items()}


def test_flow_fingerprint_covers_resolved_tvl1_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = build_workspace(tmp_path, {"go/a": moving_texture(10)})
    implicit = flow_item_fingerprints(ws)
    assert flow_item_fingerprints(ws, warps=5, tau=0.25) == implicit, "explicit defaults equal implicit ones"
    assert flow_item_fingerprints(ws, sync_every=3, shrink=False) == implicit, "speed-only knobs are not hashed"
    assert flow_item_fingerprints(ws, warps=3) != implicit
    # A changed default in the solver (copied to the static table that status reads, which
    # tests/test_cli_imports.py keeps equal to it) makes every cached video stale ...
    monkeypatch.setitem(catalog.TVL1_DEFAULTS, "warps", 3)
    assert flow_item_fingerprints(ws) != implicit
    assert flow_item_fingerprints(ws) == flow_item_fingerprints(ws, warps=3)
    monkeypatch.undo()
    # ... while caches computed with OpenCV's settings keep the fingerprint they had when
    # only typed options were hashed: no existing cache is recomputed for the change.
    job = plan_jobs(ws, "li3d")["go/a"]
    before = fingerprint(fingerprint(1, 0, "uint8", 20.0, {}, "auto"), file_fingerprint(job.path), clip_signature(job))
    assert implicit == {"go/a": before}
    with pytest.raises(ConfigError, match="unknown parameter.*wraps"):
        FlowStage(ws, tvl1_params={"wraps": 3})
    provenance = FlowStage(ws, tvl1_params={"warps": 3}).item_fn().args[0].provenance
    assert provenance["tvl1_resolved"] == {**OPENCV_DEFAULTS, "warps": 3}
