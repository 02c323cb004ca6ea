"""``vpipe run --gpus``: one pinned worker per GPU on this machine, checked on CPU with a
faked GPU count. The cluster test starts real worker processes and reads the
environment each one sees."""

from __future__ import annotations

import os

import pytest

import vpipe.pipeline.local_gpus as local_gpus
from vpipe.errors import ConfigError
from tests.test_cli import invoke


def test_gpus_all_or_n_pins_the_visible_gpus() -> None:
    assert local_gpus.chosen_gpus("all", {}, 4) == ["0", "1", "2", "3"]
    assert local_gpus.chosen_gpus("2", {}, 4) == ["0", "1"]
    assert local_gpus.chosen_gpus("all", {"CUDA_VISIBLE_DEVICES": "3,5"}, 2) == ["3", "5"]
    assert local_gpus.chosen_gpus("1", {"CUDA_VISIBLE_DEVICES": "GPU-ab, GPU-cd"}, 2) == ["GPU-ab"]


@pytest.mark.parametrize(
    ("gpus", "count", "message"),
    [("2", 0, "no CUDA device"), ("3", 2, "has 2 CUDA devices"), ("0", 2, ">= 1"), ("some", 2, "'all' or a number")],
)
def test_gpus_option_errors(gpus: str, count: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        local_gpus.chosen_gpus(gpus, {}, count)


def test_gpus_refuses_other_workers_and_pinned_device_names() -> None:
    with pytest.raises(ConfigError, match="without --scheduler"):
        local_gpus.check_gpus_option("all", device="auto", scheduler="tcp://h:8786", cluster=None)
    with pytest.raises(ConfigError, match="not cuda:1"):
        local_gpus.check_gpus_option("all", device="cuda:1", scheduler=None, cluster=None)
    with pytest.raises(ConfigError, match="not cpu"):
        local_gpus.check_gpus_option("2", device="cpu", scheduler=None, cluster=None)
    local_gpus.check_gpus_option("2", device="cuda", scheduler=None, cluster=None)


def test_worker_specs_pin_one_gpu_each_and_offer_one_gpu() -> None:
    specs = local_gpus.gpu_worker_specs(["0", "1", "2"], {}, memory_bytes=30 * 2**30)
    options = [spec["options"] for spec in specs.values()]
    assert [o["env"]["CUDA_VISIBLE_DEVICES"] for o in options] == ["0", "1", "2"]
    assert all(o["resources"] == {"GPU": 1} and o["nthreads"] == 1 for o in options)
    assert all(o["memory_limit"] == 10 * 2**30 for o in options)
    assert len({o["name"] for o in options}) == 3
    share = str(max(1, (os.cpu_count() or 1) // 3))
    assert all(o["env"]["VPIPE_WORKER_CORES"] == share for o in options), "loaders sized from the share"


def _visible() -> str:
    import time

    time.sleep(0.2)  # holds the worker, so tasks spread over both
    return os.environ["CUDA_VISIBLE_DEVICES"]


@pytest.mark.slow
def test_each_worker_process_sees_only_its_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two faked GPUs: two worker processes, each with its own CUDA_VISIBLE_DEVICES,
    and tasks asking for GPU=1 run one per worker."""
    monkeypatch.setattr(local_gpus, "cuda_device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with local_gpus.local_gpu_executor("all", device="auto") as executor:
        client = executor.client
        client.wait_for_workers(2, timeout=60)
        seen = client.run(_visible)
        assert sorted(seen.values()) == ["0", "1"]
        resources = [w["resources"] for w in client.scheduler_info()["workers"].values()]
        assert resources == [{"GPU": 1}, {"GPU": 1}]
        futures = [client.submit(_visible, pure=False, resources={"GPU": 1}) for _ in range(4)]
        assert sorted(client.gather(futures)) == ["0", "0", "1", "1"]


def test_cli_gpus_and_device_errors_are_one_line(tmp_path) -> None:
    result = invoke("run", "--dataset", "synthetic", "--workspace", tmp_path / "ws", "--gpus", "2", "--device", "cuda:1")
    assert result.exit_code == 1 and "not cuda:1" in result.output
    result = invoke("run", "--dataset", "synthetic", "--workspace", tmp_path / "ws", "--device", "gpu0")
    assert result.exit_code == 2 and "cuda:N" in result.output
    result = invoke("flow", "--dataset", "synthetic", "--workspace", tmp_path / "ws", "--device", "cuda:3")
    assert result.exit_code == 1
    assert "no CUDA device" in result.output and len(result.output.strip().splitlines()) == 1
