"""The main job: every stage that exists, in DAG order, for one dataset."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vpipe.errors import StageError
from vpipe.pipeline.executor import Executor
from vpipe.pipeline.runner import run_stage, stage_status
from vpipe.pipeline.stage import Stage, StageReport
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.extract import ExtractStage
from vpipe.stages.flow import FlowStage
from vpipe.stages.plan import PlanStage
from vpipe.stages.probe import ProbeStage
from vpipe.video.plan import SamplerConfig, sampler_config

#: The synthetic videos are 112-160 px wide and 10-80 frames long: small crops and
#: short clips keep the whole main job within minutes on a laptop CPU.
SYNTHETIC_SAMPLER = {"need": 16, "clips": 2, "size": 112, "short_side": 128}
#: ~100 train videos x 4 steps is too few descriptors for the paper's K = 128.
SYNTHETIC_CLUSTERS = 16


@dataclass
class ChainOptions:
    """Options of the main job that are not dataset identity."""

    decoder: str = "auto"
    sampler: str = "li3d"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    plan_name: str | None = None
    backbone: str = "li3d"
    streams: tuple[str, ...] = ("rgb", "flow")
    weights: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    batch_size: int = 8
    decode_workers: int = 0
    videos_per_task: int | None = None
    #: None: the paper's 128, or SYNTHETIC_CLUSTERS on the synthetic dataset; 0 skips encoding.
    clusters: int | None = None

    def sampler_config(self, adapter: str) -> SamplerConfig:
        defaults = SYNTHETIC_SAMPLER if adapter == "synthetic" and self.sampler == "li3d" else {}
        return sampler_config(self.sampler, **{**defaults, **self.sampler_options})


def build_chain(workspace: DatasetWorkspace, config: dict[str, Any], options: ChainOptions) -> list[Step]:
    """Stages in execution order; each reads its inputs only when it runs."""
    plan = PlanStage(workspace, options.sampler_config(config["adapter"]), plan_name=options.plan_name)
    extracts = [
        ExtractStage(
            workspace,
            backbone=options.backbone,
            stream=stream,
            plan=plan.plan_name,
            weights=options.weights.get(stream),
            device=options.device,
            batch_size=options.batch_size,
            decode_workers=options.decode_workers,
            videos_per_task=options.videos_per_task,
            decoder=options.decoder,
        )
        for stream in options.streams
    ]
    flows = (
        [
            FlowStage(
                workspace,
                plan=plan.plan_name,
                device=options.device,
                videos_per_task=options.videos_per_task,
                decoder=options.decoder,
            )
        ]
        if "flow" in options.streams
        else []
    )
    clusters = options.clusters
    if clusters is None:
        clusters = SYNTHETIC_CLUSTERS if config["adapter"] == "synthetic" else 128
    features = extracts[0].set_name
    encodes = [encode_step(workspace, features, clusters)] if clusters else []
    heads = [train_step(workspace, features, clusters or 16), evaluate_step(workspace, features, clusters or 16)]
    return [ProbeStage(workspace, config, decoder=options.decoder), plan, *flows, *extracts, *encodes, *heads]


class DatasetStep:
    """A step over the whole dataset at once (fitting a codebook, training a head).

    It has no per-item journal: its function skips work whose artifact fingerprint is
    unchanged, and reports whether it computed anything.
    """

    def __init__(self, name: str, run: Callable[[], StageReport], status: Callable[[], StageReport]):
        self.name = name
        self._run = run
        self._status = status

    def run(self) -> StageReport:
        return self._run()

    def status(self) -> StageReport:
        return self._status()


Step = Stage | DatasetStep


def run_chain(
    steps: list[Step],
    executor: Executor,
    *,
    gpu_executor: Executor | None = None,
    progress: bool = True,
    retry_failed: bool = False,
) -> list[StageReport]:
    """Run every step in order; stages asking for a GPU use ``gpu_executor`` when given."""
    reports = []
    for step in steps:
        if isinstance(step, DatasetStep):
            reports.append(step.run())
            continue
        wants_gpu = bool(step.resources and "GPU" in step.resources)
        chosen = gpu_executor if wants_gpu and gpu_executor is not None else executor
        reports.append(run_stage(step, chosen, progress=progress, retry_failed=retry_failed))
    return reports


def chain_status(steps: list[Step]) -> list[StageReport]:
    return [step.status() if isinstance(step, DatasetStep) else stage_status(step) for step in steps]


def encode_step(workspace: DatasetWorkspace, features: str, clusters: int) -> DatasetStep:
    from vpipe.stages.encode import run_encode

    def run() -> StageReport:
        started = time.perf_counter()
        summary = run_encode(workspace, features, clusters)
        computed = int(summary["codebook"]["fitted"]) + sum(bool(e.get("written")) for e in summary["encodings"].values())
        return StageReport(
            stage="encode",
            total=summary["videos"],
            done=summary["videos"],
            computed=computed,
            up_to_date=0 if computed else summary["videos"],
            seconds=time.perf_counter() - started,
            artifact=summary["codebook"]["path"],
            details=summary,
        )

    def status() -> StageReport:
        path = workspace.codebook_path(features, clusters)
        return StageReport(stage="encode", total=1, done=int(path.exists()), artifact=str(path))

    return DatasetStep("encode", run, status)


def train_step(workspace: DatasetWorkspace, features: str, clusters: int) -> DatasetStep:
    """BiLSTM + concat soft aggregation on the rgb features; an identical finished run is reused."""
    from vpipe.train.trainer import existing_run, pipeline_config, train_for_pipeline

    def run() -> StageReport:
        started = time.perf_counter()
        result = train_for_pipeline(workspace, features, progress=True, clusters=clusters)
        return StageReport(
            stage="train",
            total=1,
            done=1,
            computed=int(not result.reused),
            up_to_date=int(result.reused),
            seconds=time.perf_counter() - started,
            artifact=str(result.directory),
            details={"run_id": result.run_id, "test_accuracy": result.metrics["accuracy"]},
        )

    def status() -> StageReport:
        try:
            found = existing_run(workspace, pipeline_config(features, clusters=clusters))
        except StageError as error:
            return StageReport(stage="train", ready=False, reason=str(error))
        return StageReport(stage="train", total=1, done=int(found is not None))

    return DatasetStep("train", run, status)


def evaluate_step(workspace: DatasetWorkspace, features: str, clusters: int) -> DatasetStep:
    """Re-score the main job's run on the test split, plot it, and write the comparison table."""
    from vpipe.report import build_report
    from vpipe.train.evaluate import evaluate
    from vpipe.train.trainer import existing_run, pipeline_config

    def run() -> StageReport:
        started = time.perf_counter()
        found = existing_run(workspace, pipeline_config(features, clusters=clusters))
        if found is None:
            raise StageError(f"no finished training run to evaluate: run `vpipe train --dataset {workspace.dataset}`")
        evaluation = found.directory / "evaluation.json"
        report_path = workspace.report_path
        current = (
            evaluation.exists()
            and report_path.exists()
            and report_path.stat().st_mtime >= (found.directory / "metrics.json").stat().st_mtime
        )
        metrics = json.loads(evaluation.read_text()) if current else evaluate(workspace, found.run_id)
        report = (
            {"report": str(report_path), "table": report_path.read_text(), "plots": {}}
            if current
            else build_report(workspace)
        )
        return StageReport(
            stage="evaluate",
            total=1,
            done=1,
            computed=int(not current),
            up_to_date=int(current),
            seconds=time.perf_counter() - started,
            artifact=report["report"],
            details={"run_id": found.run_id, "accuracy": metrics["accuracy"], **report},
        )

    def status() -> StageReport:
        return StageReport(stage="evaluate", total=1, done=int((workspace.report_path).exists()))

    return DatasetStep("evaluate", run, status)
