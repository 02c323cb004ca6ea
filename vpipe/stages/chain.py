"""The main job: every stage that exists, in DAG order, for one dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vpipe.pipeline.executor import Executor
from vpipe.pipeline.runner import run_stage, stage_status
from vpipe.pipeline.stage import Stage, StageReport
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.plan import PlanStage
from vpipe.stages.probe import ProbeStage
from vpipe.video.plan import SamplerConfig, sampler_config


@dataclass
class ChainOptions:
    """Options of the main job that are not dataset identity."""

    decoder: str = "auto"
    sampler: str = "li3d"
    sampler_options: dict[str, Any] = field(default_factory=dict)
    plan_name: str | None = None

    def sampler_config(self) -> SamplerConfig:
        return sampler_config(self.sampler, **self.sampler_options)


def build_chain(workspace: DatasetWorkspace, config: dict[str, Any], options: ChainOptions) -> list[Stage]:
    """Stages in execution order; each reads its inputs only when it runs."""
    return [
        ProbeStage(workspace, config, decoder=options.decoder),
        PlanStage(workspace, options.sampler_config(), plan_name=options.plan_name),
    ]


def run_chain(
    stages: list[Stage], executor: Executor, *, progress: bool = True, retry_failed: bool = False
) -> list[StageReport]:
    return [run_stage(stage, executor, progress=progress, retry_failed=retry_failed) for stage in stages]


def chain_status(stages: list[Stage]) -> list[StageReport]:
    return [stage_status(stage) for stage in stages]
