"""``vpipe probe``, ``plan``, ``status`` and ``run``: the stage DAG from the command line."""

from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from vpipe import catalog
from vpipe.cli.options import Adapter, Backbone, Clusters, Compute, Dataset, Decoder, Device, Json, Option, Root
from vpipe.cli.options import Split, Workspace, compute_options, dataset_workspace, emit_json, executor_for
from vpipe.cli.options import gpu_stage_executor, option_group, parse_key_values, user_errors
from vpipe.cli.stage_command import Reports, RunFlags, stage_command

if TYPE_CHECKING:
    from vpipe.artifacts.records import DatasetConfig
    from vpipe.pipeline.stage import StageReport
    from vpipe.pipeline.workspace import DatasetWorkspace
    from vpipe.stages.main_job import ChainOptions

# The stages are imported inside each command: they bring torch, h5py and pandas, which
# ``--help`` must not wait for.

Sampler = Annotated[
    Literal[catalog.SAMPLERS] | None,
    typer.Option(
        "--sampler",
        help="Temporal sampler (docs/sampling in DESIGN.md); -o alone adjusts the backbone's plan.",
        show_default="the backbone's plan (`vpipe backbones`)",
    ),
]
PlanName = Annotated[
    str | None,
    typer.Option("--plan-name", help="Name of the plan.", show_default="the backbone's plan, else the sampler name"),
]
PlanBackbone = Annotated[
    Literal[catalog.BACKBONES],
    typer.Option("--backbone", "-b", help="Backbone whose paper's plan is made when no --sampler is given."),
]
VideosPerClass = Annotated[
    int | None,
    typer.Option(
        "--videos-per-class",
        min=2,
        help="Synthetic dataset size per class (scales it up).",
        show_default=str(catalog.SYNTHETIC_VIDEOS_PER_CLASS),
    ),
]
SyntheticSeed = Annotated[
    int | None, typer.Option("--synthetic-seed", help="Seed of the synthetic dataset.", show_default="0")
]
Streams = Annotated[
    list[str] | None,
    typer.Option("--stream", help="Stream to extract, repeatable: rgb, flow.", show_default="rgb and flow"),
]
WeightsOption = Annotated[
    list[str] | None,
    typer.Option("--weights", help="STREAM=PATH of a local checkpoint, repeatable.", show_default="random init"),
]

@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset's videos are and which split is used: what commands that may be the
    first to name a dataset accept (``probe``, ``run``)."""

    root: Path | None = None
    split: int | None = None
    adapter: str | None = None
    workspace: Path | None = None
    videos_per_class: int | None = None
    synthetic_seed: int | None = None

    def configure(self, dataset: str) -> tuple[DatasetWorkspace, DatasetConfig]:
        """The workspace, and the dataset's configuration with these options merged over the recorded ones."""
        from vpipe.stages.dataset import configure_dataset

        ws = dataset_workspace(dataset, self.workspace)
        generated = {"videos_per_class": self.videos_per_class, "seed": self.synthetic_seed}
        return ws, configure_dataset(ws, adapter=self.adapter, root=self.root, split=self.split, generator_options=generated)


dataset_source = option_group(
    "source",
    DatasetSource,
    {"root": Root, "split": Split, "adapter": Adapter, "workspace": Workspace, "videos_per_class": VideosPerClass,
     "synthetic_seed": SyntheticSeed},
)  # fmt: skip


@dataclass(frozen=True)
class Planning:
    """The plan options ``plan``, ``status`` and ``run`` share."""

    sampler: str | None = None
    option: list[str] | None = None
    plan_name: str | None = None

    def chain_options(self, **more: Any) -> ChainOptions:
        from vpipe.stages.main_job import ChainOptions

        sampler_options = parse_key_values(self.option, "--option")
        return ChainOptions(sampler=self.sampler, sampler_options=sampler_options, plan_name=self.plan_name, **more)


planning = option_group("planning", Planning, {"sampler": Sampler, "option": Option, "plan_name": PlanName})


@stage_command
@compute_options
@dataset_source
def probe(
    dataset: Dataset,
    decoder: Decoder = "auto",
    *,
    source: DatasetSource,
    compute: Compute,
    flags: RunFlags,
) -> Reports | None:
    """List a dataset's videos and record what decodes: writes manifest.parquet.

    Example: vpipe probe --dataset ucf101 --root /data/ucf101 --split 1
    """
    from vpipe.stages.main_job import ChainOptions

    ws, config = source.configure(dataset)
    return _run_one_stage("probe", ws, config, ChainOptions(decoder=decoder), compute, flags)


@stage_command
@planning
def plan(
    dataset: Dataset,
    backbone: PlanBackbone = "li3d",
    workspace: Workspace = None,
    *,
    planning: Planning,
    flags: RunFlags,
) -> Reports:
    """Choose the frames and crops of every clip: writes plans/<name>.parquet.

    Without --sampler, the plan is the backbone's paper's (li3d for li3d, i3d and the
    CNNs; `vpipe backbones` lists each), named after the backbone when it declares one.

    Example: vpipe plan --dataset ucf101 --sampler li3d -o need=64 -o train_views=3
    """
    ws = dataset_workspace(dataset, workspace)
    options = planning.chain_options(backbone=backbone)
    return _run_one_stage("plan", ws, ws.read_config(), options, Compute(workers=0), flags)


def _run_one_stage(
    name: str, ws: DatasetWorkspace, config: DatasetConfig, options: ChainOptions, compute: Compute, flags: RunFlags
) -> Reports:
    """Run the main job's stage ``name`` alone: the stage ``vpipe run`` would run with these options."""
    from vpipe.pipeline.dag import select_stages
    from vpipe.pipeline.runner import run_stages
    from vpipe.stages.main_job import main_job

    stages = select_stages(main_job(ws, config, options), only=[name])
    with executor_for(compute) as executor:
        return run_stages(stages, executor, retry_failed=flags.retry_failed)


@user_errors
@planning
def status(
    dataset: Dataset,
    backbone: Backbone = "li3d",
    decoder: Decoder = "auto",
    workspace: Workspace = None,
    json_output: Json = False,
    *,
    planning: Planning,
) -> None:
    """Show, per stage, how many items are done, failed and in total.

    Example: vpipe status --dataset synthetic --json
    """
    from vpipe.pipeline.runner import stages_status
    from vpipe.stages.main_job import main_job

    ws = dataset_workspace(dataset, workspace)
    options = planning.chain_options(decoder=decoder, backbone=backbone)
    show_status(stages_status(main_job(ws, ws.read_config(), options)), dataset, json_output)


def show_status(reports: list[StageReport], dataset: str, json_output: bool) -> None:
    """Per stage: done, failed and total items, or why it cannot run yet (status and --dry-run).

    Items a run would compute are split into stale (recorded under another fingerprint:
    an input or option changed, named by :func:`vpipe.pipeline.reasons.why_stale`) and new
    (never run). ``vpipe status`` judges each stage on the inputs on disk now: a changed
    plan option makes the plan stale, and flow turns stale only once the plan is
    rewritten; a dry run (:func:`vpipe.pipeline.runner.dry_run`) says flow will run after the plan.
    """
    if json_output:
        emit_json(
            {
                r.stage: {"done": r.done, "failed": r.failed, "total": r.total, "ready": r.ready, "artifact": r.artifact}
                | ({"reason": r.reason} if not r.ready else {})
                | ({"damaged": r.damaged} if r.damaged else {})
                | ({"stale": r.stale, "why": r.why} if r.stale else {})
                | ({"new": r.new} if r.new else {})
                | ({"after": r.after} if r.after else {})
                for r in reports
            }
        )
        return
    for report in reports:
        typer.echo(
            report.summary() if not report.ready or report.after else f"{report.stage}: {report.done} done, {report.failed} failed, {report.total} total"
            + (f", {report.stale} stale ({report.why})" if report.stale else "")
            + (f", {report.new} new" if report.new else "")
            + (f", {report.damaged} damaged (shards missing or resized): `vpipe run` recomputes them" if report.damaged else "")
        )


@stage_command
@compute_options
@dataset_source
@planning
def run(
    dataset: Dataset,
    decoder: Decoder = "auto",
    backbone: Backbone = "li3d",
    stream: Streams = None,
    weights: WeightsOption = None,
    clusters: Clusters = None,
    device: Device = "auto",
    gpus: Annotated[
        str | None,
        typer.Option("--gpus", help="all or N: flow and extract on one worker process per GPU, each pinned to it."),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", metavar="NAME", help="Run only this stage (repeatable), by name: flow, extract:li3d-rgb, or a kind such as extract."),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", metavar="NAME", help="Run this stage and the stages it reads from, by name (e.g. extract:li3d-rgb).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what each selected stage has done and would do; run nothing.")
    ] = False,
    *,
    planning: Planning,
    source: DatasetSource,
    compute: Compute,
    flags: RunFlags,
) -> Reports | None:
    """Run every stage in order, doing only what is missing or stale.

    probe -> plan -> flow -> extract (rgb, flow) -> encode -> retrieval -> train -> evaluate.
    Stages are named as `vpipe status` lists them (extract:li3d-rgb, train:li3d-rgb);
    --only and --until select by name, or by kind (extract).

    Progress shows as bars on a terminal, as log lines every --log-every seconds elsewhere.

    Example: vpipe run --dataset synthetic
    """
    from vpipe.pipeline.local_gpus import check_gpus_option, local_gpu_executor
    from vpipe.pipeline.dag import select_stages
    from vpipe.pipeline import runner
    from vpipe.stages.main_job import main_job

    ws, config = source.configure(dataset)
    options = planning.chain_options(
        decoder=decoder,
        backbone=backbone,
        streams=tuple(stream or ("rgb", "flow")),
        weights={k: str(v) for k, v in parse_key_values(weights, "--weights").items()},
        clusters=clusters,
        device=device,
    )
    if gpus is not None:  # the option's own errors come before any stage's
        check_gpus_option(gpus, device=device, scheduler=compute.scheduler, cluster=compute.cluster)
    stages = select_stages(main_job(ws, config, options), only, until)
    if dry_run:
        show_status(runner.dry_run(stages, retry_failed=flags.retry_failed), dataset, flags.json_output)
        return None
    gpu_workers = local_gpu_executor(gpus, device=device, scheduler=compute.scheduler, cluster=compute.cluster)
    with gpu_workers as pinned, executor_for(compute) as executor:
        reports = runner.run_stages(
            stages,
            executor,
            gpu_executor=pinned or gpu_stage_executor(device, compute),
            retry_failed=flags.retry_failed,
        )
    return reports


def register(app: typer.Typer) -> None:
    for command in (probe, plan, status, run):
        app.command(command.__name__)(command)
