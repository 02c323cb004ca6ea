"""The main job's recipe: which stages ``vpipe run`` builds for a dataset, with which options.

Which streams are extracted and from which plan, which codebook is fitted, which
runs are trained and reported: all of it is here, and the dataset's own defaults come
from its adapter (:class:`vpipe.data.base.MainJobDefaults`). The order the stages run in
is not written here: it is derived from what each stage declares it reads
(:mod:`vpipe.pipeline.dag`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vpipe.artifacts.records import DatasetConfig
from vpipe.catalog import backbone_inputs, backbone_plan
from vpipe.data.base import MainJobDefaults, main_job_defaults
from vpipe.data.registry import get_dataset
from vpipe.encode.budget import WITHIN_BUDGET
from vpipe.pipeline.dag import stage_order
from vpipe.pipeline.stage import Stage
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.retrieval.step import IndexStage, default_embedding
from vpipe.stages.dataset_steps import EncodeStage, ReportStage, TrainStage
from vpipe.stages.extract import ExtractStage
from vpipe.stages.flow import FlowStage
from vpipe.stages.plan import PlanStage
from vpipe.stages.probe import ProbeStage
from vpipe.train.config import TrainConfig
from vpipe.video.plan import SamplerConfig, sampler_config

#: The weight-free motion descriptors the main job computes beside the CNN features.
DESCRIPTORS = "hoghofmbh"
#: Training settings of the main job's runs, sized for the built-in synthetic dataset on a
#: 2-core laptop: a small BiLSTM and codebook, so that the whole run takes well under a
#: minute for ~140 videos.
QUICK: dict[str, Any] = dict(batch_size=16, max_epochs=40, patience=10, lr=3e-3)
QUICK_HEAD: dict[str, Any] = dict(hidden=64, clusters=16)
_TRAIN_FIELDS = set(TrainConfig.__dataclass_fields__)


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


def pipeline_config(features: str | tuple[str, ...] = "li3d-rgb", **overrides: Any) -> TrainConfig:
    """The config of a main-job run: a BiLSTM with the head's default aggregation, sized
    by :data:`QUICK` (``TrainStage`` trains it, :func:`vpipe.train.current_run` checks it).

    ``overrides`` may name training options or head options (``clusters=8``).
    """
    head_overrides = {k: overrides.pop(k) for k in list(overrides) if k in QUICK_HEAD or k not in _TRAIN_FIELDS}
    head_options = {**QUICK_HEAD, **overrides.pop("head_options", {}), **head_overrides}
    return TrainConfig(features=features, head_options=head_options, **{**QUICK, **overrides})


def main_job_runs(features: dict[str, str], clusters: int) -> list[TrainConfig]:
    """The runs ``vpipe run`` trains: one per stream, and the two-stream late fusion.

    ``features`` maps stream -> feature set; with rgb and flow, the rgb, flow and
    rgb + flow (class probabilities averaged) rows of the papers' two-stream tables.
    """
    configs = [pipeline_config(name, clusters=clusters) for name in features.values()]
    if len(features) > 1:
        configs.append(pipeline_config(tuple(features.values()), clusters=clusters))
    return configs


def main_job(workspace: DatasetWorkspace, config: DatasetConfig, options: ChainOptions) -> list[Stage]:
    """The main job's stages, each declaring the stages it reads, in the order they run
    (:func:`vpipe.pipeline.dag.stage_order`); each reads its inputs only when it runs."""
    dataset = main_job_defaults(get_dataset(config.adapter))
    probe = ProbeStage(workspace, config, decoder=options.decoder)
    plan = PlanStage(workspace, options.sampler_config(dataset), plan_name=options.plan, probe=probe)
    flows = (
        [
            FlowStage(
                workspace,
                plan=plan.plan_name,
                device=options.device,
                videos_per_task=options.videos_per_task,
                decoder=options.decoder,
                plan_stage=plan,
            )
        ]
        if any("flow" in backbone_inputs(options.backbone, stream) for stream in options.streams)
        else []
    )
    extract_options = dict(
        plan=plan.plan_name, device=options.device, batch_size=options.batch_size, decode_workers=options.decode_workers,
        videos_per_task=options.videos_per_task, decoder=options.decoder, plan_stage=plan, flow=flows[0] if flows else None,
    )  # fmt: skip
    # One stage per feature set: a backbone that reads the frames and their flow together
    # (hoghofmbh) makes one set from both streams, and is then the descriptors as well.
    per_set: dict[str, ExtractStage] = {}
    for stream in options.streams:
        stage = ExtractStage(
            workspace, backbone=options.backbone, stream=stream, weights=options.weights.get(stream), **extract_options
        )
        per_set.setdefault(stage.set_name, stage)
    extracts = list(per_set.values())
    wanted = [ExtractStage(workspace, backbone=DESCRIPTORS, **extract_options)] if options.descriptors and flows else []
    descriptors = [stage for stage in wanted if stage.set_name not in per_set]
    clusters = dataset.clusters if options.clusters is None else options.clusters
    encodes = [EncodeStage(workspace, extracts[0], clusters, baseline=WITHIN_BUDGET)] if clusters and extracts else []
    retrieval = (
        [IndexStage(workspace, default_embedding(extracts[0].set_name, clusters), (encodes or extracts)[0])]
        if extracts
        else []
    )
    by_set = {stage.set_name: stage for stage in [*extracts, *descriptors]}
    runs = main_job_runs({stage.stream: stage.set_name for stage in extracts}, clusters or dataset.clusters)
    runs += [pipeline_config(stage.set_name, clusters=clusters or dataset.clusters) for stage in descriptors]
    trains = [TrainStage(workspace, run, [by_set[name] for name in run.features]) for run in runs]
    heads = [*trains, ReportStage(workspace, trains)] if trains else []
    return stage_order([probe, plan, *flows, *extracts, *descriptors, *encodes, *retrieval, *heads])
