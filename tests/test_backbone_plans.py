"""Each backbone's default plan: the paper's sampling when the user names no sampler.

The expected plans are written out here from the references (VideoMAE's Kinetics test
script, V-JEPA's ``vitl16_k400_16x8x3.yaml`` with its single-view eval transform, OpenAI's
CLIP preprocessing), not read from the code under test. The strided sampler is checked
against a transcription of VideoMAE's test loader, floats and all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vpipe import catalog
from vpipe.cli.app import app
from vpipe.data.base import PAPER_DEFAULTS
from vpipe.data.synthetic import SyntheticDataset
from vpipe.stages.main_job import ChainOptions
from vpipe.video.plan import sampler_config
from vpipe.video.sampling import strided_clips

runner = CliRunner()

#: backbone -> (plan name, sampler, the sampler's own parameters, crop size, short side)
PAPER_PLANS = {
    "videomae": ("videomae", "strided", {"frames": 16, "step": 4, "clips": 5}, 224, 224),
    "vjepa": ("vjepa", "strided", {"frames": 16, "step": 4, "clips": 8}, 224, 256),
    "clip": ("clip", "uniform", {"count": 8}, 224, 224),
}
#: The li3d plan of every other backbone, as before backbones declared plans.
LI3D_FINGERPRINT = "2baeeb8033ea1267"
LI3D_SYNTHETIC_FINGERPRINT = "ecacb9ccc4d26159"


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def videomae_test_clips(num_frames: int, clip_len: int, rate: int, segments: int) -> list[list[int]]:
    """VideoMAE's ``VideoClsDataset`` in test mode (``loadvideo_decord`` then ``__getitem__``)."""
    all_index = list(range(0, num_frames, rate))
    while len(all_index) < clip_len:
        all_index.append(all_index[-1])
    temporal_step = max(1.0 * (len(all_index) - clip_len) / (segments - 1), 0)
    return [all_index[int(chunk * temporal_step) : int(chunk * temporal_step) + clip_len] for chunk in range(segments)]


@pytest.mark.parametrize("rate", [1, 2, 4])
@pytest.mark.parametrize("segments", [2, 3, 5, 8])
def test_strided_clips_are_videomaes_test_clips(rate: int, segments: int) -> None:
    for num_frames in range(1, 400, 7):
        ours = [c.tolist() for c in strided_clips(num_frames, 16, rate, segments)]
        assert ours == videomae_test_clips(num_frames, 16, rate, segments), num_frames


def test_one_strided_clip_is_centred_and_short_videos_repeat_their_last_grid_frame() -> None:
    (clip,) = strided_clips(100, 16, 4, 1)  # grid 0..96 (25 frames): 9 spare, start at 4
    np.testing.assert_array_equal(clip, np.arange(16, 80, 4))
    (short,) = strided_clips(30, 16, 4, 1)
    np.testing.assert_array_equal(short, [0, 4, 8, 12, 16, 20, 24, 28] + [28] * 8)
    assert all(np.diff(c).min() >= 0 for c in strided_clips(30, 16, 4, 3))


@pytest.mark.parametrize("backbone", sorted(PAPER_PLANS))
def test_a_backbone_without_plan_options_samples_as_its_paper(backbone: str) -> None:
    name, sampler, own, size, short_side = PAPER_PLANS[backbone]
    options = ChainOptions(backbone=backbone)
    params = options.sampler_config(PAPER_DEFAULTS).params()
    assert options.plan == name
    assert params == {
        "name": sampler, **own, "size": size, "short_side": short_side, "view0": "center",
        "train_views": 1, "test_views": 1, "flip_prob": 0.5, "seed": 0,
    }  # fmt: skip
    # The synthetic dataset's small li3d clips are li3d's alone.
    assert options.sampler_config(SyntheticDataset.main_job) == options.sampler_config(PAPER_DEFAULTS)


@pytest.mark.parametrize("backbone", [b for b in catalog.BACKBONES if b not in PAPER_PLANS])
def test_the_other_backbones_keep_the_li3d_plan_and_its_fingerprints(backbone: str) -> None:
    options = ChainOptions(backbone=backbone)
    assert options.plan == "li3d"
    assert options.sampler_config(PAPER_DEFAULTS).fingerprint() == LI3D_FINGERPRINT
    assert options.sampler_config(SyntheticDataset.main_job).fingerprint() == LI3D_SYNTHETIC_FINGERPRINT
    assert ChainOptions(backbone=backbone, sampler="li3d").sampler_config(SyntheticDataset.main_job).params() == sampler_config(
        "li3d", **SyntheticDataset.main_job.li3d_options
    ).params()


@pytest.mark.parametrize("backbone", sorted(PAPER_PLANS))
def test_the_default_given_explicitly_equals_the_implicit_one(backbone: str) -> None:
    name, sampler, own, size, short_side = PAPER_PLANS[backbone]
    explicit = {**own, "size": size, "short_side": short_side}
    implicit = ChainOptions(backbone=backbone)
    for given in (
        ChainOptions(backbone=backbone, sampler=sampler, sampler_options=explicit),
        ChainOptions(backbone=backbone, sampler_options=explicit),
        ChainOptions(backbone=backbone, sampler=sampler),
    ):
        assert given.sampler_config(PAPER_DEFAULTS).fingerprint() == implicit.sampler_config(PAPER_DEFAULTS).fingerprint()
        assert given.plan == name
    # The bare sampler under another backbone has its own defaults, hence another plan.
    bare = ChainOptions(sampler=sampler).sampler_config(PAPER_DEFAULTS)
    assert bare.fingerprint() != implicit.sampler_config(PAPER_DEFAULTS).fingerprint()
    assert sampler_config(sampler, **explicit).fingerprint() == implicit.sampler_config(PAPER_DEFAULTS).fingerprint()


def test_user_options_override_the_backbones_plan() -> None:
    adjusted = ChainOptions(backbone="videomae", sampler_options={"clips": 2, "step": 2}).sampler_config(PAPER_DEFAULTS)
    assert (adjusted.name, adjusted.frames, adjusted.step, adjusted.clips, adjusted.short_side) == ("strided", 16, 2, 2, 224)
    other = ChainOptions(backbone="videomae", sampler="li3d")
    assert other.plan == "li3d"
    assert other.sampler_config(PAPER_DEFAULTS).fingerprint() == LI3D_FINGERPRINT
    assert ChainOptions(backbone="clip", plan_name="mine").plan == "mine"
    with pytest.raises(Exception, match="belongs to the li3d sampler"):
        ChainOptions(backbone="clip", sampler_options={"need": 8}).sampler_config(PAPER_DEFAULTS)


def test_vpipe_plan_and_extract_use_the_backbones_plan(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    assert invoke("probe", "--dataset", "synthetic", "--workspace", ws, "--videos-per-class", "2", "--workers", "0").exit_code == 0
    missing = invoke("extract", "--dataset", "synthetic", "--workspace", ws, "--backbone", "videomae", "--workers", "0")
    assert missing.exit_code == 1
    assert "no plan 'videomae'" in missing.output and "vpipe plan --dataset synthetic --backbone videomae" in missing.output

    implicit = invoke("plan", "--dataset", "synthetic", "--workspace", ws, "--backbone", "videomae")
    explicit = invoke(
        "plan", "--dataset", "synthetic", "--workspace", ws, "--sampler", "strided", "--plan-name", "explicit",
        "-o", "frames=16", "-o", "step=4", "-o", "clips=5", "-o", "size=224", "-o", "short_side=224",
    )  # fmt: skip
    assert implicit.exit_code == explicit.exit_code == 0, implicit.output + explicit.output
    plans = ws / "synthetic" / "plans"
    made, given = pd.read_parquet(plans / "videomae.parquet"), pd.read_parquet(plans / "explicit.parquet")
    pd.testing.assert_frame_equal(made, given)
    assert set(made.groupby("video_id").size()) == {5}
    assert {len(frames) for frames in made["frames"]} == {16}
    assert (made[["crop_h", "crop_w"]] == 224).all().all()
    assert not (plans / "li3d.parquet").exists()


def test_backbones_shows_each_default_plan() -> None:
    rows = {row["name"]: row for row in json.loads(invoke("backbones", "--json").stdout)}
    for backbone, (name, sampler, own, size, short_side) in PAPER_PLANS.items():
        plan = rows[backbone]["plan"]
        assert (plan["name"], plan["sampler"], plan["size"], plan["short_side"]) == (name, sampler, size, short_side)
        assert {k: plan[k] for k in own} == own
    assert rows["i3d"]["plan"]["name"] == rows["i3d"]["plan"]["sampler"] == "li3d"
    out = invoke("backbones").stdout
    assert "plan videomae = strided frames=16 step=4 clips=5, 224² center crop of short side 224" in out
    assert "plan vjepa = strided frames=16 step=4 clips=8, 224² center crop of short side 256" in out
    assert "plan clip = uniform count=8, 224² center crop of short side 224" in out
