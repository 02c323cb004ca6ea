"""The extract stage against features computed independently from the plan.

References decode with PyAV directly, resize with ``torch.nn.functional.interpolate``,
slice the plan's box and flip with numpy, normalise with the backbone's published mean/std and
run a module loaded from the same weights file. Videos are 64x80, so the plan's
short-side resize (to 48x60) is a real resample. Each reference check is paired
with a control (the box moved by one pixel, or the flip dropped) that must miss the
tolerance, so a passing comparison cannot come from features that ignore geometry.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import vpipe.extract.features
from vpipe.models import backbone
from vpipe.pipeline.executor import InProcessExecutor
from vpipe.pipeline.runner import run_stage
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.extract import ExtractStage
from vpipe.stages.flow import FlowStage
from vpipe.store.index import read_index
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

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* has no weights:UserWarning")

SIZE = (64, 80)


def save_random_weights(path: Path, name: str, stream: str = "rgb", seed: int = 0) -> Path:
    """A seeded random state dict in a .pt file: both sides of a comparison load it."""
    torch.save(calibrated_state(name, stream, seed), path)
    return path


@functools.lru_cache(maxsize=None)
def calibrated_state(name: str, stream: str, seed: int) -> dict[str, torch.Tensor]:
    """Random weights whose batch-norm statistics are fitted to inputs like the tests'.

    With the default running statistics the activations of a deep random network
    shrink to ~1e-7, where float16 storage keeps no digits and every clip looks alike.
    Cached because fitting I3D's statistics costs seconds.
    """
    torch.manual_seed(seed)
    with pytest.warns(UserWarning, match="no weights"):
        model = backbone(name, stream=stream)
    spec = model.spec
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    shape = (12, spec.in_channels, 8, 32, 32) if spec.input_kind == "clip" else (16, spec.in_channels, 32, 32)
    model.train()
    with torch.no_grad():
        model.forward_features(torch.rand(shape) * 2 - 1)
    return {key: value.clone() for key, value in model.state_dict().items()}


def load_reference(name: str, stream: str, weights: Path) -> torch.nn.Module:
    return backbone(name, stream=stream, weights=weights).eval()


def reference_pixels(frames: np.ndarray, row: pd.Series, shift: int = 0) -> np.ndarray:
    """Resize, slice the plan's box (moved ``shift`` px right) and flip, as (T, h, w, 3) float32.

    The resize is torch's bilinear antialiased ``interpolate`` on uint8 frames, the
    resampling the views module documents; any other implementation rounds a quarter
    of the pixels differently by one grey level, which a random network amplifies
    beyond any tolerance that could still see a one-pixel shift.
    """
    video = torch.from_numpy(frames).permute(0, 3, 1, 2)
    if frames.shape[1:3] != (row.resize_h, row.resize_w):
        video = F.interpolate(video, size=(int(row.resize_h), int(row.resize_w)), mode="bilinear",
                              align_corners=False, antialias=True)
    video = video.permute(0, 2, 3, 1).numpy()
    x = int(row.crop_x) + shift
    out = video[:, row.crop_y : row.crop_y + row.crop_h, x : x + row.crop_w]
    if row.flip:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out, dtype=np.float32)


@torch.inference_mode()
def reference_rgb_features(model: torch.nn.Module, pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Normalise with the spec's mean/std on the 0..1 scale and run one clip."""
    spec = model.spec
    x = torch.from_numpy(pixels) / 255.0
    x = (x - torch.tensor(spec.mean)) / torch.tensor(spec.std)
    x = x.permute(0, 3, 1, 2)
    if spec.input_kind == "clip":
        x = x.permute(1, 0, 2, 3)[None]
    layers = model.forward_features(x.contiguous())
    if spec.input_kind == "clip":
        return {name: value[0].float().numpy() for name, value in layers.items()}
    return {name: value.float().numpy() for name, value in layers.items()}


def assert_features_close(cached: np.ndarray, expected: np.ndarray, control: np.ndarray | None = None) -> None:
    """Within float16 storage and float summation order; the control must fall outside."""
    scale = np.abs(expected).max()
    tolerance = 5e-3 * scale
    assert cached.dtype == np.float16 and cached.shape == expected.shape
    error = np.abs(cached.astype(np.float32) - expected).max()
    assert error <= tolerance, f"max error {error} > {tolerance}"
    if control is not None:
        miss = np.abs(control - expected).max()
        assert miss > 3 * tolerance, "the comparison cannot tell a one-pixel shift apart"


def read_row(directory: Path, video_id: str, clip: int, view: int) -> tuple[dict[str, np.ndarray], dict]:
    """A clip's arrays and its shard's provenance, via the index row and h5py alone."""
    index = read_index(directory)
    row = index[(index["video_id"] == video_id) & (index["clip"] == clip) & (index["view"] == view)]
    assert len(row) == 1
    row = row.iloc[0]
    layers = json.loads(row["layers"])
    with h5py.File(directory / row["shard"], "r") as handle:
        arrays = {name: handle[spec["dataset"]][int(row["row"])] for name, spec in layers.items()}
        provenance = json.loads(handle.attrs["provenance"])
    return arrays, provenance


@pytest.fixture(scope="module")
def rgb_workspace(tmp_path_factory: pytest.TempPathFactory) -> DatasetWorkspace:
    """Two 64x80 videos, two clips each, a centre view and a flipped random view."""
    tmp = tmp_path_factory.mktemp("rgb")
    videos = {"a/v0": moving_texture(14, height=64, width=80, seed=1),
              "b/v1": moving_texture(12, height=64, width=80, seed=2)}
    return build_workspace(tmp, videos, size=SIZE, clips=2, train_views=2, flip_prob=1.0)


@pytest.mark.parametrize(
    ("name", "layer", "shape"),
    [("li3d", "pool", (1, 1024)), ("resnet50", "pool", (8, 2048))],
    ids=["li3d-clip", "resnet50-frames"],
)
def test_rgb_features_equal_an_independent_computation(
    rgb_workspace: DatasetWorkspace, tmp_path: Path, name: str, layer: str, shape: tuple[int, ...]
) -> None:
    """Every (video, clip, view) holds the backbone's output on the plan's pixels."""
    ws = rgb_workspace
    weights = save_random_weights(tmp_path / f"{name}.pt", name)
    stage = ExtractStage(ws, backbone=name, weights=weights, name=f"{name}-ref", batch_size=3)
    report = run_stage(stage, InProcessExecutor(), progress=False)
    assert (report.done, report.failed) == (2, 0)

    model = load_reference(name, "rgb", weights)
    info = manifest(ws)
    plan = plan_rows(ws)
    assert plan["flip"].any() and (plan["resize_w"] == 60).all()
    for row in plan.itertuples():
        frames = decode_all(info.loc[row.video_id, "path"])[list(row.frames)]
        expected = reference_rgb_features(model, reference_pixels(frames, row))[layer]
        control = reference_rgb_features(model, reference_pixels(frames, row, shift=1))[layer]
        arrays, provenance = read_row(ws.features_dir(f"{name}-ref"), row.video_id, row.clip, row.view)
        assert arrays[layer].shape == expected.shape == shape
        assert_features_close(arrays[layer], expected, control)
    assert provenance["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert provenance["weights"] == str(weights.resolve())
    assert provenance["backbone"] == name and provenance["stream"] == "rgb"


def test_without_weights_provenance_says_random(rgb_workspace: DatasetWorkspace) -> None:
    run_stage(ExtractStage(rgb_workspace, backbone="li3d", name="unweighted"), InProcessExecutor(), progress=False)
    _, provenance = read_row(rgb_workspace.features_dir("unweighted"), "a/v0", 0, 0)
    assert provenance["weights_sha256"] == "random" and provenance["weights"] == "random"


def test_clips_of_several_videos_batch_together_and_land_on_their_rows(
    rgb_workspace: DatasetWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """batch_size 3 over 4 clips per video mixes videos in a batch; rows match batch_size 1."""
    weights = save_random_weights(tmp_path / "li3d.pt", "li3d")
    sizes: list[int] = []
    run_model = vpipe.extract.features.run_model

    def recording(model, clips, device, precision="fp32"):
        sizes.append(len(clips))
        return run_model(model, clips, device, precision)

    monkeypatch.setattr(vpipe.extract.features, "run_model", recording)
    run_stage(ExtractStage(rgb_workspace, backbone="li3d", weights=weights, name="batched",
                           batch_size=3, videos_per_task=2), InProcessExecutor(), progress=False)
    assert sizes == [3, 3, 2], "clips of the two videos should share forward passes"
    sizes.clear()
    run_stage(ExtractStage(rgb_workspace, backbone="li3d", weights=weights, name="single",
                           batch_size=1, videos_per_task=1), InProcessExecutor(), progress=False)
    assert sizes == [1] * 8

    batched = read_index(rgb_workspace.features_dir("batched"))
    assert batched["shard"].nunique() == 1
    pools = {}
    for key in sorted(planned_keys(rgb_workspace)):
        together, _ = read_row(rgb_workspace.features_dir("batched"), *key)
        alone, _ = read_row(rgb_workspace.features_dir("single"), *key)
        np.testing.assert_allclose(together["pool"], alone["pool"], rtol=1e-2, atol=1e-3)
        pools[key] = alone["pool"]
    distinct = {np.round(p.astype(np.float32), 2).tobytes() for p in pools.values()}
    assert len(distinct) == len(pools), "clips whose features coincide cannot prove row placement"


def test_interrupted_run_resumes_and_weights_change_recomputes_all(tmp_path: Path) -> None:
    """Ctrl-C after one video: the rerun does the rest; a second rerun touches nothing;
    new weights in the same file make every video stale and give the new features."""
    videos = {f"{c}/v{k}": moving_texture(10, seed=k + 2 * i) for i, c in enumerate("ab") for k in range(2)}
    ws = build_workspace(tmp_path, videos)
    weights = save_random_weights(tmp_path / "li3d.pt", "li3d")

    def stage() -> ExtractStage:
        return ExtractStage(ws, backbone="li3d", weights=weights, batch_size=4, videos_per_task=2)

    with pytest.raises(KeyboardInterrupt):
        run_stage(stage(), Interrupting(after=1), progress=False)
    resumed = run_stage(stage(), InProcessExecutor(), progress=False)
    assert (resumed.computed, resumed.up_to_date, resumed.done) == (3, 1, 4)
    directory = ws.features_dir("li3d-rgb")
    assert_clean_artifact(directory, planned_keys(ws))

    index_path = directory / "index.parquet"
    mtime = index_path.stat().st_mtime_ns
    again = run_stage(stage(), InProcessExecutor(), progress=False)
    assert (again.computed, again.done) == (0, 4)
    assert index_path.stat().st_mtime_ns == mtime

    save_random_weights(weights, "li3d", seed=1)
    changed = run_stage(stage(), InProcessExecutor(), progress=False)
    assert (changed.computed, changed.up_to_date, changed.done) == (4, 0, 4)
    assert_clean_artifact(directory, planned_keys(ws))
    model = load_reference("li3d", "rgb", weights)
    info = manifest(ws)
    for row in plan_rows(ws).itertuples():
        frames = decode_all(info.loc[row.video_id, "path"])[list(row.frames)]
        arrays, provenance = read_row(directory, row.video_id, row.clip, row.view)
        expected = reference_rgb_features(model, reference_pixels(frames, row))["pool"]
        assert_features_close(arrays["pool"], expected)
        assert provenance["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_missing_and_truncated_videos_fail_alone(tmp_path: Path) -> None:
    """Videos deleted or cut short after planning fail as ``extract:<name>``; others finish."""
    ws = build_workspace(tmp_path, {f"a/v{k}": moving_texture(12, seed=k) for k in range(3)})
    paths = manifest(ws)["path"]
    Path(paths["a/v0"]).unlink()
    good = Path(paths["a/v1"]).read_bytes()
    Path(paths["a/v1"]).write_bytes(good[: len(good) // 6])

    report = run_stage(ExtractStage(ws, backbone="li3d", name="cut", videos_per_task=3),
                       InProcessExecutor(), progress=False)
    assert (report.total, report.done, report.failed) == (3, 1, 2)
    failures = pd.read_parquet(ws.failures_path)
    assert set(failures["video_id"]) == {"a/v0", "a/v1"}
    assert set(failures["stage"]) == {"extract:cut"}
    assert failures["error"].str.len().gt(0).all()
    assert_clean_artifact(ws.features_dir("cut"), planned_keys(ws, {"a/v2"}))


def test_flow_stream_reads_the_cached_flow(tmp_path: Path) -> None:
    """li3d-flow features equal the backbone on the cached codes scaled by q/255*2-1."""
    ws = build_workspace(tmp_path, {"a/v": moving_texture(12, seed=7)}, train_views=2, flip_prob=1.0)
    run_stage(FlowStage(ws, tvl1_params=FAST_TVL1), InProcessExecutor(), progress=False)
    weights = save_random_weights(tmp_path / "li3d-flow.pt", "li3d", stream="flow")
    report = run_stage(ExtractStage(ws, backbone="li3d", stream="flow", weights=weights),
                       InProcessExecutor(), progress=False)
    assert (report.done, report.failed) == (1, 0)

    model = load_reference("li3d", "flow", weights)
    for row in plan_rows(ws).itertuples():
        codes, _ = read_row(ws.flow_dir("li3d"), row.video_id, row.clip, row.view)
        flow = torch.from_numpy(codes["flow"]).float()
        assert flow.shape == (8, 2, 32, 32)
        with torch.inference_mode():
            unit = flow / 255.0 * 2.0 - 1.0
            expected = model.forward_features(unit.permute(1, 0, 2, 3)[None].contiguous())["pool"].numpy()
            control = model.forward_features(unit.flip(0).permute(1, 0, 2, 3)[None].contiguous())["pool"].numpy()
        arrays, provenance = read_row(ws.features_dir("li3d-flow"), row.video_id, row.clip, row.view)
        assert_features_close(arrays["pool"], expected[0], control[0])
    assert provenance["stream"] == "flow"


def test_plan_jobs_are_built_once_until_the_plan_or_manifest_changes(tmp_path) -> None:
    import os

    from vpipe.errors import StageError
    from vpipe.stages.planned_videos import plan_jobs

    ws = DatasetWorkspace(tmp_path, "tiny")
    with pytest.raises(StageError, match="no plan 'li3d'"):
        plan_jobs(ws, "li3d")
    ws.plan_path("li3d").parent.mkdir(parents=True)
    box = {"resize_h": 128, "resize_w": 170, "crop_y": 8, "crop_x": 29, "crop_h": 112, "crop_w": 112, "flip": False}
    rows = [{"video_id": f"v{i}", "clip": 0, "view": 0, "frames": [0, 1, 2, 3], **box} for i in range(3)]
    pd.DataFrame(rows).to_parquet(ws.plan_path("li3d"))
    manifest = pd.DataFrame({"video_id": ["v0", "v1", "v2"], "path": ["/a", "/b", "/c"], "num_frames": [8, 8, 8],
                             "label": 0, "label_name": "a", "split": "train", "status": "ok"})  # fmt: skip
    manifest.to_parquet(ws.manifest_path)
    first = plan_jobs(ws, "li3d")
    assert sorted(first) == ["v0", "v1", "v2"] and plan_jobs(ws, "li3d") is first
    manifest.assign(num_frames=[9, 9, 9]).to_parquet(ws.manifest_path)
    os.utime(ws.manifest_path, ns=(1, 1))  # a rewrite within the same mtime tick still changes the key: size or mtime
    second = plan_jobs(ws, "li3d")
    assert second is not first and second["v0"].num_frames == 9
    pd.DataFrame(rows[:2]).to_parquet(ws.plan_path("li3d"))
    assert sorted(plan_jobs(ws, "li3d")) == ["v0", "v1"]


def test_item_fingerprints_equal_the_plain_fingerprint_of_their_parts(rgb_workspace: DatasetWorkspace) -> None:
    """Flow and extract items hash shared JSON pieces; the result must be exactly
    ``fingerprint(config, input, clip_signature(job))`` so stored work stays current."""
    from tests.fingerprint_reference import clip_signature
    from vpipe.pipeline.fingerprint import file_fingerprint, fingerprint
    from vpipe.stages.planned_videos import plan_jobs
    from vpipe.stages.flow import FLOW_FORMAT

    ws = rgb_workspace
    flow = FlowStage(ws, plan="li3d")
    jobs = plan_jobs(ws, "li3d")
    assert len(jobs) == 2
    config_fp = fingerprint(FLOW_FORMAT, flow.stack, flow.encoding, flow.bound, flow.tvl1_params, flow.decoder)
    for item in flow.items():
        job = jobs[item.key]
        assert item.fingerprint == fingerprint(config_fp, file_fingerprint(job.path), clip_signature(job))
    extract = ExtractStage(ws, backbone="li3d", plan="li3d")
    for item in extract.items():
        job = jobs[item.key]
        inputs = fingerprint(extract.decoder, file_fingerprint(job.path))
        assert item.fingerprint == fingerprint(extract.model_fingerprint(), inputs, clip_signature(job))
