"""Device kind and precision: recorded in provenance, part of fingerprints, and the
bf16 overflow fallback, all on CPU (bf16 autocast exists there too).

The fake backbone overflows only when autocast is on, which is what an activation past
bf16's range does; the reference for the fp32 retry is a numpy mean of the clip's
normalised pixels.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pandas as pd
import pytest
import torch

import vpipe.device
import vpipe.extract.features
from vpipe.device import ComputeSettings, resolve_device
from vpipe.errors import ConfigError
from vpipe.extract.features import ExtractConfig, extract_videos
from vpipe.extract.inputs import crop_rgb_clips
from vpipe.pipeline.executor import InProcessExecutor
from vpipe.pipeline.runner import run_stage, stage_status
from vpipe.stages.extract import ExtractStage
from vpipe.stages.planned_videos import plan_jobs
from vpipe.stages.flow import FlowStage
from vpipe.store.reader import FeatureSet
from tests.test_flow_stage import FAST_TVL1, build_workspace, moving_texture

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* has no weights:UserWarning")


class OverflowingUnderBf16(torch.nn.Module):
    """Pooled mean of each clip; infinite under autocast, and NaN for a clip whose mean
    is above ``hot`` whatever the precision (a video that fails in fp32 too)."""

    spec = SimpleNamespace(stream="rgb", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), input_kind="clip")

    def __init__(self, hot: float = 0.9):
        super().__init__()
        self.hot = hot
        self.calls: list[bool] = []

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        autocast = torch.is_autocast_enabled("cpu")
        self.calls.append(autocast)
        pool = x.float().mean(dim=(2, 3, 4))
        if autocast:
            pool = pool + float("inf")
        pool = torch.where(pool.mean(1, keepdim=True) > self.hot, torch.nan, pool)
        return {"pool": pool}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("precision")
    white = np.full((12, 48, 64, 3), 255, dtype=np.uint8)
    videos = {"a/v0": moving_texture(12, seed=1), "a/v1": moving_texture(12, seed=2), "b/hot": white}
    return build_workspace(tmp, videos, clips=2)


def run_bf16(workspace, tmp_path: Path, model: torch.nn.Module, monkeypatch) -> list:
    monkeypatch.setattr(vpipe.extract.features, "load_model", lambda *args, **kwargs: model)
    jobs = list(plan_jobs(workspace, "li3d").values())
    config = ExtractConfig(backbone="fake", stream="rgb", out_dir=str(tmp_path / "out"), device="cpu",
                           batch_size=4, precision="bf16")  # fmt: skip
    return jobs, extract_videos(config, jobs)


def test_bf16_overflow_is_computed_again_in_fp32_and_a_video_non_finite_in_fp32_fails_alone(
    workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = OverflowingUnderBf16()
    jobs, outcome = run_bf16(workspace, tmp_path, model, monkeypatch)
    by_video = {job.video_id: result for job, result in zip(jobs, outcome)}
    assert isinstance(by_video["b/hot"], Exception) and "non-finite" in str(by_video["b/hot"])
    assert "fp32 too" in str(by_video["b/hot"])
    assert all(isinstance(by_video[v], list) and by_video[v] for v in ("a/v0", "a/v1")), "one video must not fail the task"
    assert any(model.calls) and not all(model.calls), "bf16 first, then fp32 retries"
    rows = pd.DataFrame([row for v in ("a/v0", "a/v1") for row in by_video[v]])
    _check_against_numpy(tmp_path, rows, jobs)


def _check_against_numpy(tmp_path: Path, rows: pd.DataFrame, jobs: list) -> None:
    """Each stored pool equals the numpy mean of (pixels/255 - 0.5)/0.5 over its clip."""
    clips = {(job.video_id, c.clip, c.view): c.data for job in jobs if job.video_id != "b/hot"
             for c in crop_rgb_clips(job, "auto")}  # fmt: skip
    for _, row in rows.iterrows():
        layers = json.loads(row["layers"])
        with h5py.File(tmp_path / "out" / row["shard"], "r") as handle:
            stored = handle[layers["pool"]["dataset"]][int(row["row"])]
        pixels = clips[(row["video_id"], int(row["clip"]), int(row["view"]))].astype(np.float64)
        expected = ((pixels / 255.0 - 0.5) / 0.5).mean(axis=(0, 1, 2))
        np.testing.assert_allclose(stored.astype(np.float64), expected, atol=2e-3)


def test_fp32_reference_adds_nothing_to_fingerprints_and_cuda_bf16_does() -> None:
    cpu = ComputeSettings.for_device("cpu")
    assert (cpu.device, cpu.precision, cpu.storage_dtype) == ("cpu", "fp32", "float16")
    assert cpu.fingerprint_parts() == ()
    assert ComputeSettings("cuda", "bf16").fingerprint_parts() == ("compute", "cuda", "bf16")
    assert ComputeSettings("cpu", "bf16").fingerprint_parts() == ("compute", "cpu", "bf16")
    with pytest.raises(ConfigError, match="precision"):
        ComputeSettings("cpu", "fp8")


def fake_gpus(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(vpipe.device, "cuda_device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)


def test_device_index_is_checked_against_the_devices_present(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 0)
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda:0")
    assert resolve_device("auto").type == "cpu"
    fake_gpus(monkeypatch, 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    assert resolve_device("auto").type == "cuda"
    with pytest.raises(ConfigError, match=r"cuda:0\.\.cuda:1"):
        resolve_device("cuda:2")
    with pytest.raises(ConfigError, match="cuda:N"):
        resolve_device("gpu")


def test_device_kind_asks_torch_only_where_a_gpu_driver_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``vpipe status`` resolves ``--device auto`` for the fingerprints; with no GPU driver
    device on the machine the answer is cpu without importing torch, and CPU
    fingerprints are those of an explicit ``--device cpu``."""
    from vpipe.device import device_kind

    def no_torch(device: str) -> torch.device:
        raise AssertionError(f"torch asked to resolve {device!r}")

    monkeypatch.setattr(vpipe.device, "GPU_DEVICE_FILES", (str(tmp_path / "nvidia[0-9]*"), str(tmp_path / "kfd")))
    with monkeypatch.context() as patch:
        patch.setattr(vpipe.device, "resolve_device", no_torch)
        assert device_kind("auto") == device_kind("cpu") == "cpu"
        assert ComputeSettings.for_device("auto") == ComputeSettings.for_device("cpu")
        assert ComputeSettings.for_device("auto").fingerprint_parts() == ()
    (tmp_path / "nvidia0").touch()
    fake_gpus(monkeypatch, 1)
    assert device_kind("auto") == "cuda"
    fake_gpus(monkeypatch, 0)  # a driver, but no device torch can use
    assert device_kind("auto") == "cpu"
    with pytest.raises(ConfigError, match="no CUDA device"):
        device_kind("cuda")


def test_a_cpu_cache_is_stale_for_cuda_and_provenance_names_the_settings(
    workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Extracted on CPU; the same stage asked for on CUDA reports every video to redo,
    while CPU stays current. The flow stage likewise."""
    flow = FlowStage(workspace, tvl1_params=FAST_TVL1)
    run_stage(flow, InProcessExecutor(), progress=False)
    extract = ExtractStage(workspace, backbone="li3d", name="cpu-made", batch_size=4)
    report = run_stage(extract, InProcessExecutor(), progress=False)
    assert report.done == 3
    with FeatureSet.open(extract.artifact) as features:
        provenance = features.provenance
    assert {k: provenance[k] for k in ("device_kind", "precision", "storage_dtype")} == {
        "device_kind": "cpu", "precision": "fp32", "storage_dtype": "float16"}  # fmt: skip
    with FeatureSet.open(flow.artifact) as features:
        assert features.provenance["storage_dtype"] == "uint8"
    assert stage_status(ExtractStage(workspace, backbone="li3d", name="cpu-made", device="cpu")).done == 3

    fake_gpus(monkeypatch, 1)
    on_cuda = ExtractStage(workspace, backbone="li3d", name="cpu-made", device="cuda", batch_size=4)
    assert (on_cuda.compute.device, on_cuda.compute.precision) == ("cuda", "bf16")
    assert stage_status(on_cuda).done == 0, "CPU features must not count as CUDA ones"
    assert stage_status(FlowStage(workspace, tvl1_params=FAST_TVL1, device="cuda")).done == 0
    assert stage_status(FlowStage(workspace, tvl1_params=FAST_TVL1, device="cpu")).done == 3


class BeyondFloat16(OverflowingUnderBf16):
    """Finite in fp32, but past float16's range for the bright video: storage overflow."""

    def forward_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pool = x.float().mean(dim=(2, 3, 4))
        return {"pool": torch.where(pool.mean(1, keepdim=True) > self.hot, 1e6, pool)}


def test_features_beyond_float16_storage_fail_their_video_alone(
    workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs, outcome = run_bf16(workspace, tmp_path, BeyondFloat16(), monkeypatch)
    by_video = {job.video_id: result for job, result in zip(jobs, outcome)}
    assert isinstance(by_video["b/hot"], ValueError) and "float16" in str(by_video["b/hot"])
    assert all(isinstance(by_video[v], list) and by_video[v] for v in ("a/v0", "a/v1"))
