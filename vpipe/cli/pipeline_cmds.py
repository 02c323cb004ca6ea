"""``vpipe probe``, ``plan``, ``status`` and ``run``: the stage DAG from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

from vpipe import catalog
from vpipe.pipeline.notices import summarise as summarise_notices

from vpipe.cli.options import (
    Adapter,
    Backbone,
    Clusters,
    Compute,
    Dataset,
    Decoder,
    Device,
    Json,
    LogEvery,
    Option,
    Quiet,
    RetryFailed,
    Root,
    Split,
    Strict,
    Verbose,
    Workspace,
    compute_options,
    dataset_workspace,
    emit_json,
    err,
    executor_for,
    gpu_stage_executor,
    parse_key_values,
    setup_logging,
    user_errors,
)

if TYPE_CHECKING:
    from vpipe.pipeline.stage import StageReport
    from vpipe.pipeline.workspace import DatasetWorkspace

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

def _configure(
    dataset: str, workspace, root, split, adapter, videos_per_class=None, synthetic_seed=None
) -> tuple[DatasetWorkspace, dict]:
    from vpipe.stages.dataset import configure_dataset

    ws = dataset_workspace(dataset, workspace)
    config = configure_dataset(
        ws,
        adapter=adapter,
        root=root,
        split=split,
        synthetic_options={"videos_per_class": videos_per_class, "seed": synthetic_seed},
    )
    return ws, config


def finish(reports: list[StageReport], json_output: bool, strict: bool) -> None:
    summarise_notices()
    failed = sum(r.failed for r in reports)
    if json_output:
        emit_json({"stages": [r.to_dict() for r in reports], "failed": failed})
    else:
        for report in reports:
            typer.echo(report.summary())
        for report in reports:
            retrieval = report.details.get("retrieval")
            if retrieval:
                figures = "  ".join(f"{k} {retrieval[k]:.3f}" for k in ("R@1", "R@5", "mAP") if retrieval.get(k) is not None)
                typer.echo(f"retrieval ({retrieval['embedding']}, test queries against train videos): "
                           f"{figures or retrieval.get('skipped', 'not evaluated')}")  # fmt: skip
        for report in reports:
            if "table" in report.details:
                typer.echo("\n" + report.details["table"].strip() + "\n")
                typer.echo(f"report: {report.details['report']}")
                for run_id, plots in report.details.get("plots", {}).items():
                    if plots:
                        typer.echo(f"plots of {run_id}: {Path(plots[0]).parent}")
        did = sum(r.computed for r in reports)
        typer.echo(
            ("nothing to do: everything is up to date" if did == 0 else f"done: {did} items processed")
            + f"; {failed} failed item(s)"
            + (" (see failures.parquet)" if failed else "")
        )
    if strict and failed:
        err.print(f"[red]{failed} item(s) failed and --strict is set[/]")
        raise typer.Exit(1)


@user_errors
@compute_options
def probe(
    dataset: Dataset,
    root: Root = None,
    split: Split = None,
    adapter: Adapter = None,
    workspace: Workspace = None,
    decoder: Decoder = "auto",
    videos_per_class: VideosPerClass = None,
    synthetic_seed: SyntheticSeed = None,
    retry_failed: RetryFailed = False,
    strict: Strict = False,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
    log_every: LogEvery = 30.0,
    *,
    compute: Compute,
) -> None:
    """List a dataset's videos and record what decodes: writes manifest.parquet.

    Example: vpipe probe --dataset ucf101 --root /data/ucf101 --split 1
    """
    from vpipe.stages.chain import ChainOptions, build_chain, chain_status, run_chain, select_steps

    setup_logging(verbose, quiet=quiet, log_every=log_every)
    ws, config = _configure(dataset, workspace, root, split, adapter, videos_per_class, synthetic_seed)
    stages = build_chain(ws, config, ChainOptions(decoder=decoder))[:1]
    with executor_for(compute) as executor:
        reports = run_chain(stages, executor, retry_failed=retry_failed)
    finish(reports, json_output, strict)


@user_errors
def plan(
    dataset: Dataset,
    sampler: Sampler = None,
    option: Option = None,
    plan_name: PlanName = None,
    backbone: PlanBackbone = "li3d",
    workspace: Workspace = None,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
    log_every: LogEvery = 30.0,
) -> None:
    """Choose the frames and crops of every clip: writes plans/<name>.parquet.

    Without --sampler, the plan is the backbone's paper's (li3d for li3d, i3d and the
    CNNs; `vpipe backbones` lists each), named after the backbone when it declares one.

    Example: vpipe plan --dataset ucf101 --sampler li3d -o need=64 -o train_views=3
    """
    from vpipe.stages.chain import ChainOptions, build_chain, run_chain

    setup_logging(verbose, quiet=quiet, log_every=log_every)
    ws = dataset_workspace(dataset, workspace)
    options = ChainOptions(
        sampler=sampler, sampler_options=parse_key_values(option, "--option"), plan_name=plan_name, backbone=backbone
    )
    stages = build_chain(ws, ws.read_config(), options)[1:2]
    with executor_for(Compute(workers=0)) as executor:
        reports = run_chain(stages, executor)
    finish(reports, json_output, strict=False)


@user_errors
def status(
    dataset: Dataset,
    sampler: Sampler = None,
    option: Option = None,
    plan_name: PlanName = None,
    backbone: Backbone = "li3d",
    decoder: Decoder = "auto",
    workspace: Workspace = None,
    json_output: Json = False,
) -> None:
    """Show, per stage, how many items are done, failed and in total.

    Example: vpipe status --dataset synthetic --json
    """
    from vpipe.stages.chain import ChainOptions, build_chain, chain_status

    ws = dataset_workspace(dataset, workspace)
    options = ChainOptions(
        decoder=decoder,
        sampler=sampler,
        sampler_options=parse_key_values(option, "--option"),
        plan_name=plan_name,
        backbone=backbone,
    )
    show_status(chain_status(build_chain(ws, ws.read_config(), options)), dataset, json_output)


def show_status(reports: list[StageReport], dataset: str, json_output: bool) -> None:
    """Per stage: done, failed and total items, or why it cannot run yet (status and --dry-run)."""
    if json_output:
        emit_json(
            {
                r.stage: {"done": r.done, "failed": r.failed, "total": r.total, "ready": r.ready, "artifact": r.artifact}
                | ({"reason": r.reason} if not r.ready else {})
                | ({"damaged": r.damaged} if r.damaged else {})
                for r in reports
            }
        )
        return
    for report in reports:
        typer.echo(
            report.summary() if not report.ready else f"{report.stage}: {report.done} done, {report.failed} failed, {report.total} total"
            + (f", {report.damaged} damaged: run `vpipe verify --dataset {dataset} --repair`" if report.damaged else "")
        )


@user_errors
@compute_options
def run(
    dataset: Dataset,
    root: Root = None,
    split: Split = None,
    adapter: Adapter = None,
    workspace: Workspace = None,
    decoder: Decoder = "auto",
    sampler: Sampler = None,
    option: Option = None,
    plan_name: PlanName = None,
    backbone: Backbone = "li3d",
    stream: Streams = None,
    weights: WeightsOption = None,
    clusters: Clusters = None,
    device: Device = "auto",
    gpus: Annotated[
        str | None,
        typer.Option("--gpus", help="all or N: flow and extract on one worker process per GPU, each pinned to it."),
    ] = None,
    videos_per_class: VideosPerClass = None,
    synthetic_seed: SyntheticSeed = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", metavar="NAME", help="Run only this stage (repeatable), by name: flow, extract:li3d-rgb, or a kind such as extract."),
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", metavar="NAME", help="Run the stages up to and including this one, by name (e.g. extract:li3d-rgb).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what each selected stage has done and would do; run nothing.")
    ] = False,
    retry_failed: RetryFailed = False,
    strict: Strict = False,
    json_output: Json = False,
    verbose: Verbose = False,
    quiet: Quiet = False,
    log_every: LogEvery = 30.0,
    *,
    compute: Compute,
) -> None:
    """Run every stage in order, doing only what is missing or stale.

    probe -> plan -> flow -> extract (rgb, flow) -> encode -> retrieval -> train -> evaluate.
    Stages are named as `vpipe status` lists them, with ':' for the space
    (extract:li3d-rgb, train:li3d-rgb); --only and --until select by name.

    Progress shows as bars on a terminal, as log lines every --log-every seconds elsewhere.

    Example: vpipe run --dataset synthetic
    """
    from vpipe.pipeline.local_gpus import check_gpus_option, local_gpu_executor
    from vpipe.stages.chain import ChainOptions, build_chain, chain_status, run_chain, select_steps

    setup_logging(verbose, quiet=quiet, log_every=log_every)
    ws, config = _configure(dataset, workspace, root, split, adapter, videos_per_class, synthetic_seed)
    options = ChainOptions(
        decoder=decoder,
        sampler=sampler,
        sampler_options=parse_key_values(option, "--option"),
        plan_name=plan_name,
        backbone=backbone,
        streams=tuple(stream or ("rgb", "flow")),
        weights={k: str(v) for k, v in parse_key_values(weights, "--weights").items()},
        clusters=clusters,
        device=device,
    )
    if gpus is not None:  # the option's own errors come before any stage's
        check_gpus_option(gpus, device=device, scheduler=compute.scheduler, cluster=compute.cluster)
    steps = select_steps(build_chain(ws, config, options), only, until)
    if dry_run:
        show_status(chain_status(steps), dataset, json_output)
        return
    gpu_workers = local_gpu_executor(gpus, device=device, scheduler=compute.scheduler, cluster=compute.cluster)
    with gpu_workers as pinned, executor_for(compute) as executor:
        reports = run_chain(
            steps,
            executor,
            gpu_executor=pinned or gpu_stage_executor(device, compute),
            retry_failed=retry_failed,
        )
    finish(reports, json_output, strict)


def register(app: typer.Typer) -> None:
    for command in (probe, plan, status, run):
        app.command(command.__name__)(command)
