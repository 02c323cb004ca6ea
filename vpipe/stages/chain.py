"""The main job: every stage that exists, in DAG order, for one dataset."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vpipe.artifacts.records import DatasetConfig
from vpipe.catalog import backbone_plan
from vpipe.data.base import MainJobDefaults, main_job_defaults
from vpipe.data.registry import get_dataset
from vpipe.errors import ConfigError
from vpipe.pipeline.executor import Executor
from vpipe.pipeline.runner import run_stage, stage_status
from vpipe.pipeline.stage import Stage, StageReport
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.encode.budget import WITHIN_BUDGET
from vpipe.pipeline.fingerprint import one_stat_per_file
from vpipe.retrieval.step import IndexStep, default_embedding
from vpipe.stages.dataset_steps import DatasetStep, EncodeStep, ReportStep, TrainStep
from vpipe.stages.extract import ExtractStage
from vpipe.stages.flow import FlowStage
from vpipe.stages.plan import PlanStage
from vpipe.stages.probe import ProbeStage
from vpipe.train import TrainConfig, pipeline_config
from vpipe.video.plan import SamplerConfig, sampler_config

#: The weight-free motion descriptors the main job computes beside the CNN features.
DESCRIPTORS = "hoghofmbh"


@dataclass
class ChainOptions:
    """Options of the main job that are not dataset identity."""

    decoder: str = "auto"
    #: None: the backbone's default plan (:func:`vpipe.catalog.backbone_plan`).
    sampler: str | None = None
    sampler_options: dict[str, Any] = field(default_factory=dict)
    plan_name: str | None = None
    backbone: str = "li3d"
    streams: tuple[str, ...] = ("rgb", "flow")
    weights: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    batch_size: int = 8
    decode_workers: int | None = None
    videos_per_task: int | None = None
    #: None: the dataset's (:class:`vpipe.data.base.MainJobDefaults`, the paper's 128); 0 skips encoding.
    clusters: int | None = None
    #: Also extract :data:`DESCRIPTORS` from the frames and the flow (needs the flow stream).
    descriptors: bool = True

    def sampler_config(self, dataset: MainJobDefaults) -> SamplerConfig:
        """The sampler and its resolved options, each default from one place, later ones winning:
        the sampler's own, the backbone's plan (when the sampler is the backbone's), the
        dataset's main-job clips (for li3d, e.g. the synthetic set's short ones), then the
        user's ``-o``.

        So an option given explicitly with its default value plans, and fingerprints,
        exactly as leaving it out.
        """
        default = backbone_plan(self.backbone)
        sampler = self.sampler or default.sampler
        backbone_defaults = default.options if sampler == default.sampler else {}
        dataset_defaults = dataset.li3d_options if sampler == "li3d" else {}
        return sampler_config(sampler, **{**backbone_defaults, **dataset_defaults, **self.sampler_options})

    @property
    def plan(self) -> str:
        """The plan's name: ``--plan-name``, else the backbone's plan's name when the sampler
        is the backbone's (li3d's is ``li3d``), else the sampler's."""
        if self.plan_name:
            return self.plan_name
        default = backbone_plan(self.backbone)
        return default.name if self.sampler in (None, default.sampler) else self.sampler


def main_job_runs(features: dict[str, str], clusters: int) -> list[TrainConfig]:
    """The runs ``vpipe run`` trains: one per stream, and the two-stream late fusion.

    ``features`` maps stream -> feature set; with rgb and flow, the rgb, flow and
    rgb + flow (class probabilities averaged) rows of the papers' two-stream tables.
    """
    configs = [pipeline_config(name, clusters=clusters) for name in features.values()]
    if len(features) > 1:
        configs.append(pipeline_config(tuple(features.values()), clusters=clusters))
    return configs


def build_chain(workspace: DatasetWorkspace, config: DatasetConfig, options: ChainOptions) -> list[Step]:
    """Stages in execution order; each reads its inputs only when it runs."""
    dataset = main_job_defaults(get_dataset(config.adapter))
    plan = PlanStage(workspace, options.sampler_config(dataset), plan_name=options.plan)
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
    descriptors = (
        [
            ExtractStage(
                workspace,
                backbone=DESCRIPTORS,
                plan=plan.plan_name,
                device=options.device,
                batch_size=options.batch_size,
                decode_workers=options.decode_workers,
                videos_per_task=options.videos_per_task,
                decoder=options.decoder,
            )
        ]
        if options.descriptors and flows
        else []
    )
    clusters = dataset.clusters if options.clusters is None else options.clusters
    features = {stage.stream: stage.set_name for stage in extracts}
    encodes = [EncodeStep(workspace, extracts[0].set_name, clusters, baseline=WITHIN_BUDGET)] if clusters else []
    runs = main_job_runs(features, clusters or dataset.clusters)
    runs += [pipeline_config(stage.set_name, clusters=clusters or dataset.clusters) for stage in descriptors]
    heads = [*(TrainStep(workspace, run) for run in runs), ReportStep(workspace, runs)]
    retrieval = [IndexStep(workspace, default_embedding(extracts[0].set_name, clusters))] if extracts else []
    return [
        ProbeStage(workspace, config, decoder=options.decoder), plan, *flows, *extracts, *descriptors, *encodes,
        *retrieval, *heads,
    ]  # fmt: skip


Step = Stage | DatasetStep


def step_name(step: Step) -> str:
    """The name ``--only`` and ``--until`` take: the label, kind and subject joined by ``:``.

    ``probe``, ``plan``, ``flow``, ``extract:li3d-rgb``, ``encode:li3d-rgb``,
    ``retrieval``, ``train:li3d-rgb``, ``evaluate``. A bare kind (``extract``) names every
    step of that kind.
    """
    return step.label.replace(" ", ":", 1)


def select_steps(steps: list[Step], only: list[str] | None = None, until: str | None = None) -> list[Step]:
    """The steps ``--only`` and ``--until`` name, in run order; unknown names are an error.

    ``until`` keeps every step up to the last one it names, inclusive; ``only`` keeps the
    steps it names. Given both, a step must pass both. Selection never reorders: a step
    still reads what the steps before it made, and says it is not ready when that is
    missing.
    """
    names = [step_name(step) for step in steps]

    def matches(name: str, wanted: str) -> bool:
        return name == wanted or name.split(":", 1)[0] == wanted

    for wanted in [*(only or []), *([until] if until else [])]:
        if not any(matches(name, wanted) for name in names):
            raise ConfigError(f"no stage named {wanted!r} in this run; its stages: {', '.join(names)}")
    keep = [True] * len(steps)
    if until:
        last = max(i for i, name in enumerate(names) if matches(name, until))
        keep = [i <= last for i in range(len(steps))]
    if only:
        keep = [k and any(matches(name, wanted) for wanted in only) for k, name in zip(keep, names)]
    return [step for step, k in zip(steps, keep) if k]


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
    """Every step's report, from one snapshot of the source files (see :func:`one_stat_per_file`)."""
    with one_stat_per_file():
        return [step.status() if isinstance(step, DatasetStep) else stage_status(step) for step in steps]
