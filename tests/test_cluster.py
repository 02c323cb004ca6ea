"""Batch-system workers: the job script each system gets, and a real scheduler losing a worker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from vpipe.cli.app import app
from vpipe.cli.options import compute_from_options
from vpipe.errors import ConfigError
from vpipe.pipeline.cluster import ClusterSpec, job_script, load_cluster_file
from vpipe.pipeline.executor import DaskExecutor, items_per_task

pytest.importorskip("dask_jobqueue")

ROOT = Path(__file__).resolve().parent.parent
SCHEDULER = "tcp://10.1.2.3:8786"


def directives(script: str, prefix: str) -> list[str]:
    return [line[len(prefix) :].strip() for line in script.splitlines() if line.startswith(prefix)]


def worker_command(script: str) -> str:
    return next(line for line in script.splitlines() if "distributed.cli.dask_worker" in line)


def test_slurm_job_script_asks_for_the_resources_and_runs_a_gpu_worker():
    spec = ClusterSpec(
        "slurm", jobs=4, gpus_per_job=2, cores=6, memory="48GB", walltime="02:30:00",
        queue="gpu", account="proj42", job_extra=("--constraint=a100",),
    )  # fmt: skip
    script = job_script(spec, SCHEDULER)
    sbatch = directives(script, "#SBATCH")
    for wanted in ("-p gpu", "-A proj42", "-n 1", "--cpus-per-task=6", "-t 02:30:00", "--gres=gpu:2",
                   "--constraint=a100", "-J vpipe-worker"):  # fmt: skip
        assert wanted in sbatch, (wanted, sbatch)
    assert any(d.startswith("--mem=") and d.endswith("G") for d in sbatch)
    command = worker_command(script).split()
    assert command[:5] == [sys.executable, "-m", "vpipe.pipeline.gpu_workers", "--gpus", "2"], "one worker per GPU"
    assert command[5:8] == ["--", "-m", "distributed.cli.dask_worker"], "the driver's own Python runs workers"
    assert command[8] == SCHEDULER
    assert command[command.index("--nthreads") + 1] == "6"
    assert command[command.index("--resources") + 1] == "GPU=1", "one pinned worker process per GPU"
    body = script.splitlines()
    assert f"cd {os.getcwd()}" in body and "export OMP_NUM_THREADS=1" in body
    assert body.index("export OMP_NUM_THREADS=1") < body.index(worker_command(script)), "environment before the worker"


def test_cpu_jobs_offer_no_gpu_resource():
    script = job_script(ClusterSpec("slurm", cores=4), SCHEDULER)
    assert "--resources" not in script and "--gres" not in script
    assert "-A " not in script and "-p " not in script, "no account or queue unless given"


@pytest.mark.parametrize(
    ("system", "prefix", "gpu_line", "account_line"),
    [
        ("pbs", "#PBS", "-l select=1:ncpus=8:ngpus=1:mem=32GB", "-A proj"),
        ("sge", "#$", "-l gpu=1", "-P proj"),
        ("lsf", "#BSUB", '-gpu "num=1"', '-P "proj"'),
    ],
)
def test_other_systems_reserve_the_gpu_their_way(system, prefix, gpu_line, account_line):
    script = job_script(ClusterSpec(system, gpus_per_job=1, account="proj", queue="q"), SCHEDULER)
    found = directives(script, prefix)
    assert gpu_line in found and account_line in found and "-q q" in found, found
    assert "--resources GPU=1" in worker_command(script)


def test_cluster_file_is_read_and_command_line_options_win(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text("system: pbs\njobs: 10\ngpus_per_job: 1\nqueue: long\njob_extra: -l place=scatter\n")
    spec = load_cluster_file(path)
    assert (spec.system, spec.jobs, spec.gpus_per_job, spec.queue, spec.job_extra) == (
        "pbs", 10, 1, "long", ("-l place=scatter",)
    )  # fmt: skip
    compute = compute_from_options(
        scheduler=None, workers=None, cluster="slurm", cluster_file=path, jobs=3, gpus_per_job=0, cores=8,
        memory="32GB", walltime="04:00:00", queue=None, account=None, job_extra=None,
    )  # fmt: skip
    assert (compute.cluster.system, compute.cluster.jobs, compute.cluster.queue) == ("slurm", 3, "long")
    assert compute.cluster.threads == 24
    path.write_text("system: slurm\ngpus: 2\n")
    with pytest.raises(ConfigError, match="unknown keys gpus"):
        load_cluster_file(path)


def test_scheduler_and_cluster_together_is_an_error(tmp_path):
    result = CliRunner().invoke(
        app, ["probe", "--dataset", "synthetic", "--workspace", str(tmp_path), "--cluster", "slurm",
              "--scheduler", "tcp://x:1", "--videos-per-class", "2"],
    )  # fmt: skip
    assert result.exit_code == 1
    assert "--scheduler and --cluster" in result.output


def test_queued_jobs_size_the_task_window_and_promise_their_gpus():
    """Before any job starts, the window is sized for every planned thread, so dask asks for all jobs."""
    executor = DaskExecutor(cluster=ClusterSpec("slurm", jobs=5, cores=4))

    class NoWorkers:
        def scheduler_info(self):
            return {"workers": {}}

    executor._client = NoWorkers()
    assert executor._threads(None) == 20
    assert executor._supported({"GPU": 1}) is None, "CPU jobs never offer a GPU: do not wait for one"
    gpu_jobs = DaskExecutor(cluster=ClusterSpec("slurm", jobs=5, gpus_per_job=1))
    gpu_jobs._client = NoWorkers()
    assert gpu_jobs._supported({"GPU": 1}) == {"GPU": 1}, "GPU tasks wait for the GPU jobs, one per GPU"


def test_cheap_items_are_packed_and_batches_kept():
    assert items_per_task(1_000_000, 16, 1, batched=False) == 64
    assert items_per_task(100, 16, 1, batched=False) == 1, "few items: one per task so every thread works"
    assert items_per_task(10_000, 2, 1, batched=False) == 64
    assert items_per_task(10_000, 2, 8, batched=True) == 8


def start(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, **kwargs)  # fmt: skip


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def invoke(*args: object):
    """In this process, whose one torch thread (tests/conftest.py) matches the workers' one thread."""
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


TINY = ["-o", "need=8", "-o", "size=32", "-o", "short_side=48", "-o", "clips=1"]


@pytest.mark.slow
def test_worker_killed_mid_extract_loses_and_duplicates_nothing(tmp_path):
    """A real scheduler and two workers on loopback; one worker is SIGKILLed mid-extract.

    Workers and the driver are processes of their own; probe, plan and the in-process
    reference run here, which saves three interpreter start-ups.
    """
    ws = tmp_path / "ws"
    probe = invoke("probe", "--dataset", "synthetic", "--workspace", ws, "--videos-per-class", "2", "--workers", "0")
    plan = invoke("plan", "--dataset", "synthetic", "--workspace", ws, *TINY)
    assert probe.exit_code == plan.exit_code == 0, probe.output + plan.output
    reference = tmp_path / "ref"
    shutil.copytree(ws, reference)
    features = ws / "synthetic" / "features" / "li3d-rgb"

    scheduler_file = tmp_path / "scheduler.json"
    dask = [sys.executable, "-m"]
    scheduler = start([*dask, "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
                       "--no-dashboard", "--scheduler-file", str(scheduler_file)])  # fmt: skip
    workers = []
    try:
        deadline = time.time() + 60
        while not scheduler_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(2):
            workers.append(start([*dask, "distributed.cli.dask_worker", address, "--nthreads", "1",
                                  "--no-dashboard", "--memory-limit", "0"], cwd=tmp_path))  # fmt: skip
        driver = subprocess.Popen(
            [sys.executable, "-m", "vpipe.cli.app", "extract", "--dataset", "synthetic", "--workspace", str(ws),
             "--scheduler", address, "--videos-per-task", "2", "--json", "--quiet"],
            env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.time() + 180
        while time.time() < deadline and len(list(features.glob("shard-*.h5"))) < 2:
            time.sleep(0.05)
        shards_at_kill = len(list(features.glob("shard-*.h5")))
        stop(workers[0])
        out, err = driver.communicate(timeout=240)
    finally:
        for process in [*workers, scheduler]:
            stop(process)
    assert driver.returncode == 0, err
    report = json.loads(out)["stages"][0]
    assert 2 <= shards_at_kill < 14, "the worker must die while the stage still has work"
    assert (report["done"], report["failed"], report["total"]) == (28, 0, 28)

    index = pd.read_parquet(features / "index.parquet")
    assert not index.duplicated(["video_id", "clip", "view"]).any(), "no clip twice in the index"
    assert index["video_id"].nunique() == 28
    on_disk = {p.name for p in features.glob("*.h5")}
    assert on_disk == set(index["shard"]), "no orphan shard left behind"
    assert not list(features.glob(".*.tmp")), "no temporary shard left behind"

    in_process = invoke("extract", "--dataset", "synthetic", "--workspace", reference, "--workers", "0", "--quiet")
    assert in_process.exit_code == 0, in_process.output
    from vpipe.store.reader import FeatureSet

    with FeatureSet.open(features) as got, FeatureSet.open(reference / "synthetic" / "features" / "li3d-rgb") as ref:
        assert sorted(got.video_ids()) == sorted(ref.video_ids())
        for video_id in ref.video_ids():
            np.testing.assert_allclose(
                got.sequence(video_id).astype(np.float32), ref.sequence(video_id).astype(np.float32), atol=2e-3
            )
