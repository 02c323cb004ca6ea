"""Loading ahead in spawned loader processes: same results, same order, per-video errors,
and the same stored flow and features as loading in-process."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vpipe.extract.features import ExtractConfig, extract_videos
from vpipe.flow.compute import FlowConfig, flow_videos
from vpipe.stages.planned_videos import plan_jobs
from vpipe.store.index import read_index, write_index
from vpipe.video.prefetch import default_loader_workers, loader_pool, prefetched
from tests.test_flow_stage import FAST_TVL1, build_workspace, moving_texture
from tests.test_extract_stage import read_row

pytestmark = pytest.mark.filterwarnings("ignore:backbone .* has no weights:UserWarning")


@pytest.fixture(autouse=True)
def no_leftover_loaders():
    """Loader pools live as long as their process; tests end theirs."""
    yield
    for workers in (1, 2):
        loader_pool(workers).shutdown(cancel_futures=True)
    loader_pool.cache_clear()


def square_or_fail(job: int) -> int:
    if job == 3:
        raise ValueError("video 3 is unreadable")
    return job * job


def die_on_two(job: int) -> int:
    if job == 2 and os.environ.get("VPIPE_TEST_LOADER_CHILD") != str(os.getpid()):
        os._exit(3)  # a decoder crash takes the loader process down
    return job + 100


def test_loaders_per_gpu_come_from_the_worker_share_of_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    cuda = torch.device("cuda")
    monkeypatch.setenv("VPIPE_WORKER_CORES", "2")  # eight GPU workers on a 16-core box
    assert default_loader_workers(cuda) == 1
    monkeypatch.setenv("VPIPE_WORKER_CORES", "16")  # one GPU on that box: at most 4
    assert default_loader_workers(cuda) == 4
    monkeypatch.delenv("VPIPE_WORKER_CORES")
    assert default_loader_workers(cuda) == max(1, min(4, len(os.sched_getaffinity(0)) - 1))


def test_in_process_when_no_workers_and_on_cpu_by_default() -> None:
    assert default_loader_workers(torch.device("cpu")) == 0
    assert default_loader_workers(torch.device("cuda")) >= 1
    results = list(prefetched(square_or_fail, range(5), 0))
    assert [i for i, _ in results] == [0, 1, 2, 3, 4]
    assert isinstance(results[3][1], ValueError) and [r for i, r in results if i != 3] == [0, 1, 4, 16]


@pytest.mark.slow
def test_loader_processes_are_spawned_and_keep_order_and_errors() -> None:
    assert loader_pool(2)._mp_context.get_start_method() == "spawn"
    results = list(prefetched(square_or_fail, list(range(9)), 2))
    assert [i for i, _ in results] == list(range(9))
    assert str(results[3][1]) == "video 3 is unreadable"
    assert [r for i, r in results if i != 3] == [i * i for i in range(9) if i != 3]
    assert loader_pool(2) is loader_pool(2), "the pool is kept for the next task"


@pytest.mark.slow
def test_a_crashed_loader_fails_its_video_and_the_rest_load_here() -> None:
    os.environ["VPIPE_TEST_LOADER_CHILD"] = str(os.getpid())  # this process never crashes
    try:
        results = dict(prefetched(die_on_two, list(range(6)), 1))
    finally:
        del os.environ["VPIPE_TEST_LOADER_CHILD"]
    assert sorted(results) == list(range(6))
    assert all(results[i] == i + 100 for i in (0, 1, 3, 4, 5))
    assert isinstance(results[2], Exception)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory):
    videos = {f"c/v{i}": moving_texture(12, seed=i) for i in range(3)}
    return build_workspace(tmp_path_factory.mktemp("prefetch"), videos, clips=2)


def stored(directory: Path) -> dict[tuple, dict[str, np.ndarray]]:
    index = read_index(directory)
    return {key: read_row(directory, *key)[0] for key in zip(index["video_id"], index["clip"], index["view"])}


@pytest.mark.slow
def test_flow_and_features_equal_with_and_without_loader_processes(workspace, tmp_path: Path) -> None:
    jobs = list(plan_jobs(workspace, "li3d").values())
    params = tuple(sorted(FAST_TVL1.items()))
    for workers in (0, 2):
        config = FlowConfig(out_dir=str(tmp_path / f"flow{workers}"), device="cpu", tvl1_params=params,
                            loader_workers=workers)  # fmt: skip
        outcome = flow_videos(config, jobs)
        assert all(isinstance(rows, list) and rows for rows in outcome)
        write_index(tmp_path / f"flow{workers}", [row for rows in outcome for row in rows])
    flow0, flow2 = stored(tmp_path / "flow0"), stored(tmp_path / "flow2")
    assert flow0.keys() == flow2.keys() and len(flow0) == 3 * 2
    for key in flow0:
        np.testing.assert_array_equal(flow0[key]["flow"], flow2[key]["flow"])

    torch.manual_seed(0)
    for workers in (0, 2):
        config = ExtractConfig(backbone="li3d", stream="rgb", out_dir=str(tmp_path / f"rgb{workers}"), device="cpu",
                               batch_size=4, decode_workers=workers)  # fmt: skip
        outcome = extract_videos(config, jobs)
        assert all(isinstance(rows, list) and rows for rows in outcome)
        write_index(tmp_path / f"rgb{workers}", [row for rows in outcome for row in rows])
    rgb0, rgb2 = stored(tmp_path / "rgb0"), stored(tmp_path / "rgb2")
    assert rgb0.keys() == rgb2.keys()
    for key in rgb0:
        np.testing.assert_array_equal(rgb0[key]["pool"], rgb2[key]["pool"])
