"""One pinned worker process per GPU of a batch job, checked without a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from vpipe.errors import ConfigError
from vpipe.pipeline import gpu_workers
from vpipe.pipeline.cluster import ClusterSpec, job_script

pytest.importorskip("dask_jobqueue")


def test_job_gpus_come_from_the_batch_system_or_count_from_zero():
    assert gpu_workers.job_gpus(2, {"CUDA_VISIBLE_DEVICES": "3,5,7"}) == ["3", "5"]
    assert gpu_workers.job_gpus(3, {}) == ["0", "1", "2"]
    assert gpu_workers.job_gpus(1, {"CUDA_VISIBLE_DEVICES": "GPU-1a2b"}) == ["GPU-1a2b"]
    with pytest.raises(ConfigError, match="CUDA_VISIBLE_DEVICES='4'"):
        gpu_workers.job_gpus(2, {"CUDA_VISIBLE_DEVICES": "4"})


def test_each_worker_gets_its_gpu_name_and_share_of_threads_and_memory():
    args = ["-m", "distributed.cli.dask_worker", "tcp://h:1", "--name", "job7", "--nthreads", "8",
            "--memory-limit", "64GiB", "--resources", "GPU=1"]  # fmt: skip
    commands = gpu_workers.pinned_commands(args, ["2", "6"], {"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "2,6"})
    assert [env["CUDA_VISIBLE_DEVICES"] for _, env in commands] == ["2", "6"]
    assert all(env["PATH"] == "/bin" for _, env in commands)
    for i, (out, _) in enumerate(commands):
        assert out[out.index("--name") + 1] == f"job7-gpu{i}"
        assert out[out.index("--nthreads") + 1] == "4"
        assert out[out.index("--memory-limit") + 1] == "32.00GiB"
        assert out[out.index("--resources") + 1] == "GPU=1"
        assert out[:3] == args[:3]
    assert [env["VPIPE_WORKER_CORES"] for _, env in commands] == ["4", "4"], "loaders sized from the share"


def test_launcher_starts_one_pinned_process_per_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3,5")
    code = (
        "import os, sys, pathlib; "
        f"pathlib.Path({str(tmp_path)!r}, 'gpu' + os.environ['CUDA_VISIBLE_DEVICES']).write_text(' '.join(sys.argv[1:]))"
    )
    assert gpu_workers.main(["--gpus", "2", "--", "-c", code, "--name", "w", "--nthreads", "6"]) == 0
    written = {p.name: p.read_text().split() for p in tmp_path.iterdir()}
    assert set(written) == {"gpu1", "gpu3"}, "the first two of the job's GPUs, one process each"
    assert written["gpu1"] == ["--name", "w-gpu0", "--nthreads", "3"]
    assert written["gpu3"] == ["--name", "w-gpu1", "--nthreads", "3"]


def test_launcher_reports_a_failing_worker(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    code = "import os, sys; sys.exit(3 if os.environ['CUDA_VISIBLE_DEVICES'] == '1' else 0)"
    assert gpu_workers.main(["--gpus", "2", "--", "-c", code]) == 3


def test_multi_gpu_job_runs_the_launcher_single_gpu_job_a_plain_worker():
    four = job_script(ClusterSpec("slurm", gpus_per_job=4, cores=8), "tcp://h:1")
    line = next(line for line in four.splitlines() if "distributed.cli.dask_worker" in line).split()
    assert line[:5] == [sys.executable, "-m", "vpipe.pipeline.gpu_workers", "--gpus", "4"]
    assert line[5:8] == ["--", "-m", "distributed.cli.dask_worker"]
    assert line[line.index("--resources") + 1] == "GPU=1", "each pinned process offers its one GPU"
    one = job_script(ClusterSpec("pbs", gpus_per_job=1), "tcp://h:1")
    assert "vpipe.pipeline.gpu_workers" not in one and "--resources GPU=1" in one
