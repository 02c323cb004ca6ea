"""Sampling, views and plans against hand-computed indices and the papers' rules."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from vpipe.errors import ConfigError
from vpipe.video.plan import PLAN_SCHEMA, SAMPLERS, SamplerConfig, plan_video, sampler_config
from vpipe.video.sampling import (
    dense_windows,
    flow_stack_indices,
    li3d_clips,
    li3d_indices,
    tsn_indices,
    uniform_indices,
)
from vpipe.video.views import Crop, apply_crop, center_view, margin_start_range, random_view, scale_view


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# Algorithm 1 (li3d-bilstm §3.1.1)


@pytest.mark.parametrize(
    ("num_frames", "need", "expected"),
    [
        (5, 12, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]),
        (3, 7, [0, 1, 2, 0, 1, 2, 0]),
        (4, 8, [0, 1, 2, 3, 0, 1, 2, 3]),
        (1, 3, [0, 0, 0]),
        (6, 8, [0, 1, 2, 3, 4, 5, 0, 1]),
    ],
)
def test_li3d_short_video_loops_then_takes_head(num_frames, need, expected):
    out = li3d_indices(num_frames, need, rng())
    assert out.dtype == np.int64
    assert out.tolist() == expected


def test_li3d_equal_length_is_the_whole_video():
    for seed in range(20):
        assert li3d_indices(8, 8, rng(seed)).tolist() == list(range(8))


def test_li3d_long_video_random_window_covers_every_start():
    num_frames, need = 10, 4
    begins = set()
    for seed in range(400):
        out = li3d_indices(num_frames, need, rng(seed))
        begin = int(out[0])
        assert out.tolist() == list(range(begin, begin + need))
        begins.add(begin)
    assert begins == set(range(0, num_frames - need + 1))


def test_li3d_clips_evenly_spaced_windows():
    clips = li3d_clips(100, 10, 4, rng())
    assert [c.tolist() for c in clips] == [list(range(b, b + 10)) for b in (0, 30, 60, 90)]
    looped = li3d_clips(5, 12, 3, rng())
    assert [c.tolist() for c in looped] == [[0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]] * 3


# eq. 13–14 (two-stream-deep-fusion-ln-lstm)


@pytest.mark.parametrize(
    ("num_frames", "count", "expected"),
    [
        (34, 17, list(range(1, 34, 2))),  # t' = 2: 1-based 2, 4, ..., 34
        (10, 3, [2, 5, 8]),  # t' = 3: 1-based 3, 6, 9
        (11, 3, [2, 5, 8]),  # t' = floor(11/3) = 3
        (17, 17, list(range(17))),
        (5, 12, [0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4]),  # ceil(k*5/12) - 1
        (1, 3, [0, 0, 0]),
    ],
)
def test_uniform_indices(num_frames, count, expected):
    assert uniform_indices(num_frames, count).tolist() == expected


# TSN-style segments (vcm-sdd)


def test_tsn_even_spacing_by_hand():
    # vcm-sdd §4.1: 6 frames evenly over each segment. 96 frames, 2 segments of 48:
    # parts of 8 frames, middle of part j at 8j + 4.
    assert tsn_indices(96, 2, 6, None).tolist() == [4, 12, 20, 28, 36, 44, 52, 60, 68, 76, 84, 92]
    # segments [0,10) [10,20) [20,31); floor((j + 0.5) * len / 2): 2, 7 | 2, 7 | 2, 8
    assert tsn_indices(31, 3, 2, None).tolist() == [2, 7, 12, 17, 22, 28]
    # a segment shorter than k repeats its frames and never reaches into the next one
    assert tsn_indices(6, 2, 6, None).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_tsn_even_train_mode_draws_one_frame_per_part():
    seen = set()
    for seed in range(200):
        out = tsn_indices(60, 2, 3, rng(seed)).reshape(2, 3)
        for i, row in enumerate(out.tolist()):
            for j, frame in enumerate(row):
                assert 30 * i + 10 * j <= frame < 30 * i + 10 * (j + 1)
                seen.add(frame)
    assert seen == set(range(60))


def test_tsn_consecutive_test_mode_takes_segment_centres():
    # segments [0,10) [10,20) [20,30): start + (10 - 2) // 2
    assert tsn_indices(30, 3, 2, None, "consecutive").tolist() == [4, 5, 14, 15, 24, 25]
    # segments [0,10) [10,20) [20,31): slack 8, 8, 9 -> offsets 4, 4, 4
    assert tsn_indices(31, 3, 2, None, "consecutive").tolist() == [4, 5, 14, 15, 24, 25]
    assert tsn_indices(16, 8, 1, None, "consecutive").tolist() == [0, 2, 4, 6, 8, 10, 12, 14]


def test_tsn_consecutive_short_video_runs_on_and_clips_at_the_end():
    # segments [0,1) [1,2) [2,4); snippets of 3 start at 0, 1, 2
    assert tsn_indices(4, 3, 3, None, "consecutive").tolist() == [0, 1, 2, 1, 2, 3, 2, 3, 3]
    assert tsn_indices(2, 4, 1, None, "consecutive").tolist() == [0, 0, 1, 1]


def test_tsn_spacing_is_a_plan_option_and_changes_the_fingerprint():
    even, consecutive = sampler_config("tsn"), sampler_config("tsn", spacing="consecutive")
    assert even.spacing == "even" and even.fingerprint() != consecutive.fingerprint()
    with pytest.raises(ConfigError, match="spacing"):
        sampler_config("tsn", spacing="random")


def test_tsn_consecutive_train_mode_random_offsets_stay_in_segment():
    seen = [set(), set(), set()]
    for seed in range(300):
        out = tsn_indices(30, 3, 2, rng(seed), "consecutive").reshape(3, 2)
        for i, (a, b) in enumerate(out.tolist()):
            assert b == a + 1
            assert 10 * i <= a <= 10 * i + 8
            seen[i].add(a)
    assert seen == [set(range(10 * i, 10 * i + 9)) for i in range(3)]


# dense windows (ST-MANet test protocol)


def test_dense_windows_exact():
    assert [w.tolist() for w in dense_windows(10, 4, 3)] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    # 6 + 4 < 11: a last window ending on frame 10 is added
    assert [w.tolist() for w in dense_windows(11, 4, 3, step=2)] == [[0, 2], [3, 5], [6, 8], [7, 9]]
    windows = dense_windows(128, 64, 64, step=2)
    assert [w.tolist() for w in windows] == [list(range(0, 64, 2)), list(range(64, 128, 2))]


def test_dense_short_video_gives_one_looped_window():
    assert [w.tolist() for w in dense_windows(3, 8, 8, step=2)] == [[0, 2, 1, 0]]
    assert [w.tolist() for w in dense_windows(3, 5, 2)] == [[0, 1, 2, 0, 1]]


# flow stacks (two-stream-deep-fusion-ln-lstm §3.5–3.6)


def test_flow_stacks_centred_and_shifted_at_the_ends():
    out = flow_stack_indices(np.array([0, 5, 9]), 10, L=4)
    assert out.shape == (3, 5)
    assert out.tolist() == [[0, 1, 2, 3, 4], [3, 4, 5, 6, 7], [5, 6, 7, 8, 9]]
    assert flow_stack_indices([1, 8], 10, L=2).tolist() == [[0, 1, 2], [7, 8, 9]]


def test_flow_stacks_on_a_video_too_short_for_a_stack():
    assert flow_stack_indices([1], 3, L=4).tolist() == [[0, 1, 2, 2, 2]]


def test_flow_stacks_reject_centres_outside_the_video():
    with pytest.raises(ConfigError, match="center_indices"):
        flow_stack_indices([10], 10)


@pytest.mark.parametrize(
    "call",
    [
        lambda: li3d_indices(0, 4, rng()),
        lambda: uniform_indices(10, 0),
        lambda: tsn_indices(10, 0, 1, None),
        lambda: dense_windows(10, 4, 0),
        lambda: flow_stack_indices([0], 10, L=0),
    ],
)
def test_invalid_parameters_raise_config_error(call):
    with pytest.raises(ConfigError, match="positive integer"):
        call()


# spatial views (li3d-bilstm §3.1.2)


def test_scale_view_resizes_whole_frame():
    assert scale_view(240, 320, 224) == Crop(224, 224, 0, 0, 224, 224, False)


def test_center_view_is_centred():
    crop = center_view(240, 320, 224, 256)
    # 320 * 256 / 240 = 341.33 -> nearest even 342
    assert (crop.resize_h, crop.resize_w) == (256, 342)
    assert (crop.y, crop.x, crop.h, crop.w, crop.flip) == (16, 59, 224, 224, False)
    assert crop.resize_w - crop.x - crop.w == crop.x
    assert crop.resize_h - crop.y - crop.h == crop.y
    portrait = center_view(320, 240, 224, 256)
    assert (portrait.resize_h, portrait.resize_w, portrait.y, portrait.x) == (342, 256, 59, 16)


@pytest.mark.parametrize(
    ("height", "width", "size", "short_side", "resize", "y_range", "x_range"),
    [
        # D_y = 32, margin 16: [12.8, 19.2]; D_x = 116, margin 58: [46.4, 69.6]
        (256, 340, 224, 256, (256, 340), (13, 19), (47, 69)),
        # 320 * 128 / 240 = 170.67 -> 170; D_y = 16: [6.4, 9.6]; D_x = 58: [23.2, 34.8]
        (240, 320, 112, 128, (128, 170), (7, 9), (24, 34)),
        # D = 2, margin 1: [0.8, 1.2]; D_x = 76, margin 38: [30.4, 45.6]
        (226, 300, 224, 226, (226, 300), (1, 1), (31, 45)),
    ],
)
def test_random_view_obeys_margin_rule(height, width, size, short_side, resize, y_range, x_range):
    generator = rng(7)
    ys, xs = [], []
    for _ in range(3000):
        crop = random_view(height, width, size, short_side, generator)
        assert (crop.resize_h, crop.resize_w, crop.h, crop.w) == (*resize, size, size)
        ys.append(crop.y)
        xs.append(crop.x)
    assert (min(ys), max(ys)) == y_range
    assert (min(xs), max(xs)) == x_range


def test_margin_range_without_an_integer_falls_back_to_centre():
    assert margin_start_range(225, 224) == (0, 0)  # [0.4, 0.6]
    assert margin_start_range(227, 224) == (1, 1)  # [1.2, 1.8]
    assert margin_start_range(224, 224) == (0, 0)


def test_flip_frequency():
    generator = rng(3)
    flips = [random_view(240, 320, 224, 256, generator).flip for _ in range(4000)]
    assert abs(np.mean(flips) - 0.5) < 0.03
    assert not any(random_view(240, 320, 224, 256, generator, flip_prob=0.0).flip for _ in range(50))
    assert all(random_view(240, 320, 224, 256, generator, flip_prob=1.0).flip for _ in range(50))


def test_views_reject_bad_sizes():
    with pytest.raises(ConfigError, match="short_side"):
        center_view(240, 320, 224, 200)
    with pytest.raises(ConfigError, match="does not fit"):
        Crop(100, 100, 0, 0, 101, 50)


# apply_crop


def frames(t: int = 3, h: int = 256, w: int = 342, seed: int = 0) -> np.ndarray:
    return rng(seed).integers(0, 256, size=(t, h, w, 3), dtype=np.uint8)


def test_apply_crop_without_resize_is_a_slice():
    video = frames()
    out = apply_crop(video, Crop(256, 342, 10, 20, 224, 224, False))
    assert out.shape == (3, 224, 224, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, video[:, 10:234, 20:244])


def test_apply_crop_flip_mirrors_columns():
    video = frames()
    out = apply_crop(video, Crop(256, 342, 16, 59, 224, 224, True))
    np.testing.assert_array_equal(out, video[:, 16:240, 59:283][:, :, ::-1])


def test_apply_crop_resize_matches_pil_bilinear():
    video = frames(t=2, h=240, w=320, seed=1)
    crop = center_view(240, 320, 224, 256)
    out = apply_crop(video, crop)
    for t in range(2):
        resized = np.asarray(Image.fromarray(video[t]).resize((crop.resize_w, crop.resize_h), Image.BILINEAR))
        expected = resized[crop.y : crop.y + crop.h, crop.x : crop.x + crop.w]
        assert np.abs(out[t].astype(int) - expected.astype(int)).max() <= 1


def test_apply_crop_keeps_constant_frames_constant():
    video = np.full((2, 100, 150, 3), 77, dtype=np.uint8)
    out = apply_crop(video, scale_view(100, 150, 64))
    assert out.shape == (2, 64, 64, 3)
    assert (out == 77).all()


# plans


def test_plan_is_deterministic_and_typed():
    config = sampler_config("li3d", train_views=3)
    first = plan_video("v_ApplyEyeMakeup_g01_c01", 300, 240, 320, "train", config)
    second = plan_video("v_ApplyEyeMakeup_g01_c01", 300, 240, 320, "train", SamplerConfig(train_views=3))
    assert first == second
    assert [(r["clip"], r["view"]) for r in first] == [(0, 0), (0, 1), (0, 2)]
    table = pa.Table.from_pylist(first, schema=PLAN_SCHEMA)
    assert table.schema == PLAN_SCHEMA and table.num_rows == 3


def test_plan_random_windows_depend_on_video_id():
    config = sampler_config("li3d", need=16)
    begins = {plan_video(f"video_{i}", 1000, 240, 320, "train", config)[0]["frames"][0] for i in range(10)}
    assert len(begins) > 1
    for begin in begins:
        assert 0 <= begin <= 1000 - 16


def test_plan_seed_is_pinned():
    # Guards the seeding scheme: changing it silently invalidates every cached plan.
    row = plan_video("video_0", 1000, 240, 320, "train", sampler_config("li3d", need=16, train_views=2))[1]
    pinned = {k: row[k] for k in ("crop_y", "crop_x", "flip")} | {"begin": row["frames"][0]}
    assert pinned == {"crop_y": 13, "crop_x": 68, "flip": False, "begin": 274}


def test_view_zero_is_centre_and_test_split_gets_test_views():
    config = sampler_config("tsn", train_views=3, test_views=1)
    train = plan_video("a", 90, 240, 320, "train", config)
    test = plan_video("a", 90, 240, 320, "test", config)
    assert {r["view"] for r in train} == {0, 1, 2}
    assert [r["view"] for r in test] == [0]
    centre = center_view(240, 320, 224, 256)
    for row in (train[0], test[0]):
        assert (row["resize_h"], row["resize_w"], row["crop_y"], row["crop_x"], row["flip"]) == (
            centre.resize_h,
            centre.resize_w,
            centre.y,
            centre.x,
            False,
        )
    assert test[0]["frames"] == tsn_indices(90, 8, 6, None).tolist()


def test_view0_scale_and_dense_clips():
    config = sampler_config("dense", view0="scale")
    rows = plan_video("b", 200, 240, 320, "val", config)
    # windows start at 0, 64, 128 and a last one at 136 ending on frame 199
    assert [r["frames"][0] for r in rows] == [0, 64, 128, 136]
    assert [r["clip"] for r in rows] == [0, 1, 2, 3]
    assert all(len(r["frames"]) == 32 for r in rows)
    assert (rows[0]["resize_h"], rows[0]["resize_w"], rows[0]["crop_h"]) == (224, 224, 224)


def test_uniform_plan_uses_eq_14():
    rows = plan_video("c", 34, 240, 320, "test", sampler_config("uniform"))
    assert rows[0]["frames"] == list(range(1, 34, 2))


def test_fingerprint_tracks_only_relevant_parameters():
    base = sampler_config("li3d")
    assert base.fingerprint() == SamplerConfig().fingerprint()
    assert base.fingerprint() == "2baeeb8033ea1267"  # stable across runs and machines
    assert SamplerConfig(count=5).fingerprint() == base.fingerprint()
    assert SamplerConfig(flip_prob=1).fingerprint() == SamplerConfig(flip_prob=1.0).fingerprint()
    assert sampler_config("li3d", need=32).fingerprint() != base.fingerprint()
    assert sampler_config("li3d", seed=1).fingerprint() != base.fingerprint()
    assert len({sampler_config(name).fingerprint() for name in SAMPLERS}) == len(SAMPLERS)


def test_sampler_config_rejects_bad_input():
    with pytest.raises(ConfigError, match="li3d"):
        sampler_config("li3")
    with pytest.raises(ConfigError, match="need"):
        sampler_config("li3d", nead=8)
    with pytest.raises(ConfigError, match="uniform sampler"):
        sampler_config("li3d", count=8)
    with pytest.raises(ConfigError, match="short_side"):
        sampler_config("tsn", size=300)
    with pytest.raises(ConfigError, match="flip_prob"):
        sampler_config("tsn", flip_prob=1.5)
    with pytest.raises(ConfigError, match="split"):
        plan_video("a", 10, 240, 320, "training", SamplerConfig())
