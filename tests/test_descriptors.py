"""Dense HOG / HOF / MBH (``hoghofmbh``) against numpy references written here.

The references vote pixel by pixel with a triangular kernel over the circular bin
distance (not the module's floor/fraction split), cut cells with explicit loops and
normalise each descriptor type with numpy, so an error in binning, cell layout,
frame grouping or normalisation shows up as a mismatch. Synthetic inputs pin the
physics: a pure translation puts all HOF mass in one bin, a constant flow gives no
MBH, an edge puts HOG mass at its gradient's orientation, and moving the whole clip
by one cell moves the local descriptors by one grid position.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.test_extract_stage import read_row, reference_pixels
from tests.test_flow_stage import (
    FAST_TVL1,
    Interrupting,
    assert_clean_artifact,
    build_workspace,
    decode_all,
    manifest,
    moving_texture,
    plan_rows,
    planned_keys,
)
from vpipe.errors import ConfigError, StageError
from vpipe.models import backbone, list_backbones
from vpipe.pipeline.executor import InProcessExecutor
from vpipe.pipeline.runner import run_stage
from vpipe.stages.extract import ExtractStage
from vpipe.stages.flow import FlowStage

NAME = "hoghofmbh"
BINS = {"hog": 8, "hof": 9, "mbhx": 8, "mbhy": 8, "colour": 9}
DIM = 12 * sum(BINS.values())
LUMA = np.array([0.299, 0.587, 0.114])
NO_MOTION = 0.4
NO_COLOUR = 0.15


@pytest.fixture(autouse=True)
def one_thread() -> None:
    torch.set_num_threads(1)


def model(**options: int) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return backbone(NAME, **options)


# --- numpy reference ---------------------------------------------------------------------


def np_gradients(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[-1, 0, 1] differences of a 2-D image with its border pixels repeated."""
    p = np.pad(image, 1, mode="edge")
    return p[1:-1, 2:] - p[1:-1, :-2], p[2:, 1:-1] - p[:-2, 1:-1]


def np_chroma(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Opponent colour of (..., 3) values in [0, 1]: red against green, and yellow against blue."""
    r, g, b = np.moveaxis(rgb, -1, 0)
    return (r - g) / math.sqrt(2), (r + g - 2 * b) / math.sqrt(6)


def np_votes(dx: np.ndarray, dy: np.ndarray, no_motion: float | None = None) -> np.ndarray:
    """(bins, H, W): magnitude shared between the two nearest of 8 centres at k * 45 degrees."""
    magnitude = np.hypot(dx, dy)
    angle = np.mod(np.degrees(np.arctan2(dy, dx)), 360.0) / 45.0
    votes = []
    for b in range(8):
        distance = np.abs(angle - b)
        distance = np.minimum(distance, 8 - distance)
        votes.append(magnitude * np.clip(1 - distance, 0, None))
    votes = np.stack(votes)
    if no_motion is not None:
        still = magnitude <= no_motion
        votes[:, still] = 0
        votes = np.concatenate([votes, (still * no_motion)[None]])
    return votes


def lower_median(a: np.ndarray) -> float:
    """The lower of the two middle values for an even count (torch.median's convention)."""
    return float(np.sort(a, axis=None)[(a.size - 1) // 2])


def np_frame_votes(rgb: np.ndarray, flow: np.ndarray, camera: str = "median") -> dict[str, np.ndarray]:
    """Per descriptor type, (T, bins, H, W) from uint8 frames (T, H, W, 3) and flow codes (T, 2, H, W);
    with ``camera="median"`` HOF reads the flow less each frame's median flow. Colour votes each
    pixel's opponent chroma like a gradient, with a grey bin for chroma up to NO_COLOUR."""
    grey = rgb.astype(np.float64) / 255.0 @ LUMA
    uv = flow.astype(np.float64) * 40.0 / 255.0 - 20.0
    out = {name: [] for name in BINS}
    for t in range(len(rgb)):
        u, v = uv[t]
        out["hog"].append(np_votes(*np_gradients(grey[t])))
        if camera == "median":
            out["hof"].append(np_votes(u - lower_median(u), v - lower_median(v), NO_MOTION))
        else:
            out["hof"].append(np_votes(u, v, NO_MOTION))
        out["mbhx"].append(np_votes(*np_gradients(u)))
        out["mbhy"].append(np_votes(*np_gradients(v)))
        out["colour"].append(np_votes(*np_chroma(rgb[t] / 255.0), NO_COLOUR))
    return {name: np.stack(v) for name, v in out.items()}


def np_descriptor(votes: dict[str, np.ndarray], frames: list[list[int]], ys: list[tuple[int, int]],
                  xs: list[tuple[int, int]]) -> np.ndarray:
    """One descriptor: per type, cell means in (t, y, x, bin) order, L1-normalised, square-rooted."""
    parts = []
    for name in BINS:
        cells = []
        for group in frames:
            for y0, y1 in ys:
                for x0, x1 in xs:
                    cells.append(votes[name][group][:, :, y0:y1, x0:x1].mean(axis=(0, 2, 3)))
        block = np.concatenate(cells)
        total = block.sum()
        parts.append(np.sqrt(block / total) if total > 0 else block)
    return np.concatenate(parts)


def np_layers(rgb: np.ndarray, flow: np.ndarray, step: int = 3, stride: int = 1, cell: int = 16,
              camera: str = "median") -> dict[str, np.ndarray]:
    """``pool`` and ``local`` of one clip with explicit loops over windows, cells and patches:
    ``pool`` windows start every ``stride`` frames, ``local`` ones every ``step``."""
    votes = np_frame_votes(rgb, flow, camera)
    frames_, height, width = len(rgb), rgb.shape[1], rgb.shape[2]

    def groups(first: int) -> list[list[int]]:
        cuts = [first + round(k * step / 3) for k in range(4)]
        return [list(range(cuts[k], cuts[k + 1])) for k in range(3)]

    halves_y = [(0, round(height / 2)), (round(height / 2), height)]
    halves_x = [(0, round(width / 2)), (round(width / 2), width)]
    pool = [np_descriptor(votes, groups(first), halves_y, halves_x) for first in range(0, frames_ - step + 1, stride)]
    local = []
    for first in range(0, frames_ - step + 1, step):
        for py in range(height // cell - 1):
            for px in range(width // cell - 1):
                ys = [(py * cell, (py + 1) * cell), ((py + 1) * cell, (py + 2) * cell)]
                xs = [(px * cell, (px + 1) * cell), ((px + 1) * cell, (px + 2) * cell)]
                local.append(np_descriptor(votes, groups(first), ys, xs))
    return {"pool": np.stack(pool), "local": np.stack(local)}


def forward(rgb: np.ndarray, flow: np.ndarray, **options: int) -> dict[str, np.ndarray]:
    """The backbone on one clip: uint8 frames (T, H, W, 3) and flow (T, 2, H, W), uint8 codes or pixels."""
    if flow.dtype == np.uint8:
        flow = flow * (40.0 / 255.0) - 20.0
    x = np.concatenate([rgb.transpose(3, 0, 1, 2) / 255.0, flow.transpose(1, 0, 2, 3)])
    with torch.inference_mode():
        layers = model(**options).forward_features(torch.from_numpy(x[None]).float())
    return {name: value[0].numpy() for name, value in layers.items()}


def uniform(u: float, v: float, shape: tuple[int, int, int]) -> np.ndarray:
    """A flow of (u, v) pixels at every pixel, (T, 2, H, W) float."""
    return np.stack([np.full(shape, u), np.full(shape, v)], axis=1)


def block(descriptor: np.ndarray, name: str) -> np.ndarray:
    """One type's (12 cells, bins) part of a descriptor."""
    start = 12 * sum(b for n, b in BINS.items() if list(BINS).index(n) < list(BINS).index(name))
    return descriptor[..., start : start + 12 * BINS[name]].reshape(*descriptor.shape[:-1], 12, BINS[name])


def texture(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


# --- maths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "height", "width", "options"),
    [
        (16, 48, 64, {}),
        (17, 40, 56, {}),
        (16, 48, 64, {"step": 8, "stride": 8, "camera": "none"}),
        (13, 48, 48, {"step": 5, "stride": 2, "cell": 12}),
    ],
    ids=["frame-pairs", "odd-sizes", "disjoint-8", "options"],
)
def test_layers_equal_the_loop_reference(frames: int, height: int, width: int, options: dict) -> None:
    rng = np.random.default_rng(frames)
    rgb = texture(frames, height, width, seed=frames)
    flow = rng.integers(90, 166, (frames, 2, height, width), dtype=np.uint8)
    got, expected = forward(rgb, flow, **options), np_layers(rgb, flow, **options)
    spec = model(**options).spec
    assert {k: v.shape for k, v in got.items()} == spec.layer_shapes((5, frames, height, width))
    for layer in ("pool", "local"):
        assert got[layer].shape == expected[layer].shape
        np.testing.assert_allclose(got[layer], expected[layer], atol=2e-4)


def test_each_type_is_root_l1_normalised() -> None:
    got = forward(texture(8, 32, 32, 1), np.random.default_rng(1).integers(0, 256, (8, 2, 32, 32), dtype=np.uint8))
    for name in BINS:
        np.testing.assert_allclose((block(got["pool"], name) ** 2).sum((-1, -2)), 1.0, rtol=1e-5)
        assert (block(got["local"], name) >= 0).all()


def test_grey_frames_vote_only_the_grey_bin_of_colour() -> None:
    """Any grey level has zero chroma: the colour block is all in its last (grey) bin."""
    grey = np.repeat(texture(6, 32, 32, 3)[..., :1], 3, axis=-1)
    colour = block(forward(grey, uniform(0.0, 0.0, (6, 32, 32)))["pool"], "colour")
    expected = np.zeros((12, 9))
    expected[:, 8] = np.sqrt(1 / 12)
    np.testing.assert_allclose(colour, np.broadcast_to(expected, colour.shape), atol=1e-6)


def test_colour_block_orders_a_red_then_blue_patch() -> None:
    """A patch turning from red to blue on grey: the first temporal cell holds red's hue bin,
    the last blue's, and the time-reversed clip swaps them, which grey levels cannot show
    (the synthetic set's red (220, 30, 30) and blue (30, 60, 230) differ by 17 in luma)."""
    frames = np.full((3, 32, 32, 3), 128, np.uint8)
    frames[0, 8:24, 8:24] = (220, 30, 30)
    frames[1, 8:24, 8:24] = (220, 30, 30)
    frames[2, 8:24, 8:24] = (30, 60, 230)
    red = int(np.argmax(np_votes(*np_chroma(np.array([220, 30, 30]) / 255.0))))
    blue = int(np.argmax(np_votes(*np_chroma(np.array([30, 60, 230]) / 255.0))))
    assert red != blue
    still = uniform(0.0, 0.0, (3, 32, 32))
    forward_, backward = (block(forward(f, still)["pool"][0], "colour").reshape(3, 4, 9) for f in (frames, frames[::-1]))
    assert forward_[0, :, red].sum() > 0 and forward_[0, :, blue].sum() == 0
    assert forward_[2, :, blue].sum() > 0 and forward_[2, :, red].sum() == 0
    np.testing.assert_allclose(backward, forward_[::-1], atol=1e-6)


@pytest.mark.parametrize(("u", "v", "bin_"), [(2.0, 0.0, 0), (1.5, 1.5, 1), (0.0, -3.0, 6), (-2.0, 0.0, 4)])
def test_pure_translation_puts_hof_in_one_bin(u: float, v: float, bin_: int) -> None:
    """Every pixel moving by (u, v): HOF is the bin of that direction (y points down)."""
    got = forward(texture(8, 32, 32, 2), uniform(u, v, (8, 32, 32)), camera="none")
    hof = block(got["pool"][0], "hof")
    expected = np.zeros((12, 9))
    expected[:, bin_] = np.sqrt(1 / 12)
    np.testing.assert_allclose(hof, expected, atol=1e-3)
    reference = np_votes(np.full((4, 4), u), np.full((4, 4), v), NO_MOTION)
    assert (reference.sum((1, 2)) > 0).sum() == 1 and reference[bin_].sum() > 0


def test_still_flow_votes_no_motion_and_constant_flow_gives_no_mbh() -> None:
    rgb = texture(8, 32, 32, 3)
    still = forward(rgb, uniform(0.0, 0.0, (8, 32, 32)))["pool"][0]
    assert block(still, "hof")[:, 8] == pytest.approx(np.sqrt(1 / 12), abs=1e-6)
    for u, v in [(0.0, 0.0), (3.0, -1.0)]:
        descriptor = forward(rgb, uniform(u, v, (8, 32, 32)))
        for layer in ("pool", "local"):
            assert not block(descriptor[layer], "mbhx").any() and not block(descriptor[layer], "mbhy").any()


@pytest.mark.parametrize(
    ("axis", "rising", "bin_"), [("x", True, 0), ("x", False, 4), ("y", True, 2), ("y", False, 6)]
)
def test_an_edge_puts_hog_at_its_gradient_orientation(axis: str, rising: bool, bin_: int) -> None:
    """A vertical edge (axis x) has a horizontal gradient: bin 0 dark-to-bright, bin 4 the reverse."""
    ramp = np.where(np.arange(32) < 16, 40, 200) if rising else np.where(np.arange(32) < 16, 200, 40)
    image = np.broadcast_to(ramp[None, :] if axis == "x" else ramp[:, None], (32, 32))
    rgb = np.repeat(np.broadcast_to(image, (8, 32, 32))[..., None], 3, -1).astype(np.uint8)
    hog = block(forward(rgb, uniform(1.0, 0.0, (8, 32, 32)))["pool"][0], "hog")
    mass = (hog**2).sum(0)
    assert mass[bin_] == pytest.approx(1.0, abs=1e-5)
    dx, dy = np_gradients(image.astype(np.float64))
    assert np_votes(dx, dy)[bin_].sum() == pytest.approx(np_votes(dx, dy).sum())


def test_translating_the_clip_by_one_cell_moves_local_descriptors_by_one_patch() -> None:
    """Frames and flow cut one cell (16 px) further right: interior patches equal their
    neighbours in the first cut, for every type; patches at the frame borders may differ."""
    rng = np.random.default_rng(4)
    rgb = texture(8, 6, 14, 4).repeat(8, 1).repeat(8, 2)
    flow = rng.integers(60, 196, (8, 2, 6, 14), dtype=np.uint8).repeat(8, 2).repeat(8, 3)
    first = forward(rgb[:, :, :96], flow[..., :96], step=8, camera="none")["local"].reshape(2, 5, -1)
    moved = forward(rgb[:, :, 16:], flow[..., 16:], step=8, camera="none")["local"].reshape(2, 5, -1)
    np.testing.assert_allclose(moved[:, 1:3], first[:, 2:4], atol=1e-5)
    assert np.abs(moved[:, 1:3] - first[:, 1:3]).max() > 0.05, "shifted patches must differ from unshifted ones"


def test_camera_translation_leaves_mbh_and_hog_unchanged() -> None:
    """Adding a constant motion to the flow changes HOF only: MBH and HOG stay put."""
    rgb = texture(8, 32, 48, 5)
    flow = np.random.default_rng(5).integers(100, 150, (8, 2, 32, 48), dtype=np.uint8)
    panned = flow.copy()
    panned[:, 0] += 25
    a, b = forward(rgb, flow, camera="none")["pool"], forward(rgb, panned, camera="none")["pool"]
    for name in ("hog", "mbhx", "mbhy"):
        np.testing.assert_allclose(block(b, name), block(a, name), atol=1e-6)
    assert np.abs(block(b, "hof") - block(a, "hof")).max() > 0.05
    # the default median compensation removes the pan from HOF as well
    np.testing.assert_allclose(block(forward(rgb, panned)["pool"], "hof"), block(forward(rgb, flow)["pool"], "hof"), atol=1e-5)


def test_registry_lists_it_without_weights_or_warning() -> None:
    assert NAME in list_backbones()
    built = model()
    assert built.weights_info.sha256 == "none" and built.spec.num_params == 0 and not built.training
    # 16 frames of 112 x 112: 14 frame-pair windows, 5 disjoint ones x 36 patches
    assert built.spec.layer_shapes() == {"pool": (14, DIM), "local": (180, DIM)}
    with pytest.raises(ConfigError, match="no weights to load"):
        backbone(NAME, weights="x.pt")
    with pytest.raises(ConfigError, match="leave --stream at rgb"):
        backbone(NAME, stream="flow")
    with pytest.raises(ConfigError, match="at least step=3 frames"):
        built.forward_features(torch.zeros(1, 5, 2, 64, 64))
    with pytest.raises(ConfigError, match="stride=0"):
        backbone(NAME, stride=0)
    with pytest.raises(ConfigError, match="C=5"):
        built.forward_features(torch.zeros(1, 3, 8, 64, 64))


# --- the extract stage -------------------------------------------------------------------


def flow_workspace(tmp_path: Path, videos: dict[str, np.ndarray], **plan: object):
    ws = build_workspace(tmp_path, videos, **plan)
    run_stage(FlowStage(ws, tvl1_params=FAST_TVL1), InProcessExecutor(), progress=False)
    return ws


#: Disjoint 8-frame steps on raw flow: one pool step per 8-frame clip, checked against the loop reference.
STAGE_OPTIONS = {"cell": 8, "step": 8, "stride": 8, "camera": "none"}


def stage(ws, **kwargs) -> ExtractStage:
    return ExtractStage(ws, backbone=NAME, options=STAGE_OPTIONS, batch_size=3, **kwargs)


@pytest.mark.slow
def test_stage_caches_the_descriptors_of_frames_and_cached_flow(tmp_path: Path) -> None:
    """Each (clip, view) holds the reference on the plan's pixels and the flow cache's codes,
    as float16 with the spec's shapes; the shard says what it was built from."""
    ws = flow_workspace(tmp_path, {"a/v0": moving_texture(12, seed=1), "b/v1": moving_texture(10, dx=3, seed=2)},
                        train_views=2, flip_prob=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = run_stage(stage(ws), InProcessExecutor(), progress=False)
    assert (report.done, report.failed) == (2, 0)
    info = manifest(ws)
    plan = plan_rows(ws)
    assert plan["flip"].any()
    for row in plan.itertuples():
        frames = decode_all(info.loc[row.video_id, "path"])[list(row.frames)]
        rgb = reference_pixels(frames, row).round().astype(np.uint8)
        flow, _ = read_row(ws.flow_dir("li3d"), row.video_id, row.clip, row.view)
        expected = np_layers(rgb, flow["flow"], **STAGE_OPTIONS)
        arrays, provenance = read_row(ws.features_dir(NAME), row.video_id, row.clip, row.view)
        assert {k: (v.shape, v.dtype) for k, v in arrays.items()} == {
            "pool": ((1, DIM), np.float16), "local": ((9, DIM), np.float16)}
        for layer in ("pool", "local"):
            np.testing.assert_allclose(arrays[layer].astype(np.float32), expected[layer], atol=2e-3)
        hof = block(arrays["pool"].astype(np.float32)[0], "hof").sum(0)
        assert np.argmax(hof) == (4 if row.flip else 0), "a rightward texture moves left once flipped"
    assert provenance["inputs"] == ["rgb", "flow"] and provenance["weights_sha256"] == "none"
    assert provenance["resolved_options"] == {**STAGE_OPTIONS, "stride": 8} and provenance["backbone_version"] == 3


@pytest.mark.slow
def test_resume_failures_and_missing_flow(tmp_path: Path) -> None:
    """Without flow: one clear error. Ctrl-C after one video: the rerun does the rest and a
    second rerun nothing. A video deleted after the flow stage fails alone, as extract:<name>."""
    videos = {f"{c}/v{k}": moving_texture(9, seed=k + 2 * i) for i, c in enumerate("ab") for k in range(2)}
    ws = build_workspace(tmp_path, videos)
    with pytest.raises(StageError) as error:
        run_stage(stage(ws), InProcessExecutor(), progress=False)
    assert "\n" not in str(error.value) and "run `vpipe flow --dataset clips --plan li3d` first" in str(error.value)

    run_stage(FlowStage(ws, tvl1_params=FAST_TVL1), InProcessExecutor(), progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage(ws, videos_per_task=2), Interrupting(after=1), progress=False)
    resumed = run_stage(stage(ws, videos_per_task=2), InProcessExecutor(), progress=False)
    assert (resumed.computed, resumed.up_to_date, resumed.done) == (3, 1, 4)
    again = run_stage(stage(ws), InProcessExecutor(), progress=False)
    assert (again.computed, again.done) == (0, 4)
    assert_clean_artifact(ws.features_dir(NAME), planned_keys(ws))

    Path(manifest(ws).loc["a/v0", "path"]).unlink()
    broken = run_stage(stage(ws, name="after-delete", videos_per_task=4), InProcessExecutor(), progress=False)
    assert (broken.done, broken.failed) == (3, 1)
    failures = pd.read_parquet(ws.failures_path)
    assert set(failures.loc[failures["stage"] == "extract:after-delete", "video_id"]) == {"a/v0"}
    assert_clean_artifact(ws.features_dir("after-delete"), planned_keys(ws, {"a/v1", "b/v0", "b/v1"}))


def test_orientation_bins_follow_image_axes() -> None:
    """The reference's own convention, pinned: 90 degrees is +y, i.e. downwards in the image."""
    assert np.argmax(np_votes(np.array([[0.0]]), np.array([[1.0]]))[:, 0, 0]) == 2
    assert math.isclose(np_votes(np.array([[1.0]]), np.array([[math.tan(math.radians(22.5))]]))[0, 0, 0],
                        np_votes(np.array([[1.0]]), np.array([[math.tan(math.radians(22.5))]]))[1, 0, 0])


def test_median_camera_compensation_keeps_only_relative_motion() -> None:
    """A pan of (1.5, 0) px everywhere and a block moving (1.5, 3): with ``camera=median``
    the background votes no-motion and the block votes straight down (bin 2)."""
    flow = uniform(1.5, 0.0, (8, 32, 32))
    flow[:, 1, 4:12, 4:12] = 3.0
    rgb = texture(8, 32, 32, 6)
    hof = block(forward(rgb, flow, camera="median")["pool"][0], "hof").reshape(3, 2, 2, 9)
    assert (hof[..., [0, 1, 3, 4, 5, 6, 7]] == 0).all()
    assert (hof[:, 0, 0, 2] > 0).all() and (hof[:, 1:, :, 2] == 0).all() and (hof[:, :, 1, 2] == 0).all()
    plain = block(forward(rgb, flow, camera="none")["pool"][0], "hof")
    assert plain[:, 0].sum() > plain[:, 2].sum(), "without compensation the pan dominates"
    np.testing.assert_allclose(block(forward(rgb, flow, camera="median")["pool"], "mbhx"),
                               block(forward(rgb, flow)["pool"], "mbhx"), atol=1e-6)
    with pytest.raises(ConfigError, match="camera='affine'"):
        backbone(NAME, camera="affine")


def test_a_bumped_backbone_version_makes_cached_features_stale(tmp_path: Path, monkeypatch) -> None:
    """Code that changes what the same options give bumps the registered version, which
    enters the extract fingerprint: features cached before go stale, and with them the
    codebooks and encodings fitted on their index. Unbumped backbones keep their caches."""
    from vpipe import catalog
    from vpipe.models.backbones import registry
    from vpipe.pipeline.workspace import DatasetWorkspace

    ws = DatasetWorkspace(tmp_path, "clips")
    assert registry.backbone_version(NAME) == 3 and registry.backbone_version("li3d") == 1
    now = ExtractStage(ws, backbone=NAME).model_fingerprint()
    li3d = ExtractStage(ws, backbone="li3d").model_fingerprint()
    # Stages read the static copy of the versions (kept equal to the registry's by tests/test_cli_imports.py).
    monkeypatch.setitem(catalog.BACKBONE_VERSIONS, NAME, 4)
    monkeypatch.setitem(catalog.BACKBONE_VERSIONS, "li3d", 1)
    assert ExtractStage(ws, backbone=NAME).model_fingerprint() != now
    assert ExtractStage(ws, backbone="li3d").model_fingerprint() == li3d
