"""``vpipe flow``: TV-L1 optical flow of every planned clip."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from vpipe.cli.extract_cmd import Device, Plan
from vpipe.cli.options import (
    Dataset,
    Decoder,
    Json,
    RetryFailed,
    Scheduler,
    Strict,
    Verbose,
    Workers,
    Workspace,
    dataset_workspace,
    parse_key_values,
    run_single_stage,
    setup_logging,
    user_errors,
)
from vpipe.cli.pipeline_cmds import finish
from vpipe.stages.flow import FlowStage


@user_errors
def flow(
    dataset: Dataset,
    plan: Plan = "li3d",
    stack: Annotated[
        int, typer.Option("--stack", min=0, help="0: one field per clip frame (3D nets); L: L-field stacks per frame (VGG).")
    ] = 0,
    encoding: Annotated[str, typer.Option("--encoding", help="uint8 (bound-quantized, the I3D convention) or float16.")] = "uint8",
    bound: Annotated[float, typer.Option("--bound", min=0.1, help="Quantization bound in pixels.")] = 20.0,
    option: Annotated[
        Optional[list[str]], typer.Option("--option", "-o", help="TV-L1 parameter KEY=VALUE (e.g. -o warps=3).")
    ] = None,
    device: Device = "auto",
    pairs_per_batch: Annotated[
        Optional[int],
        typer.Option("--pairs-per-batch", min=1, help="Frame pairs per TV-L1 batch [default: ~100k pixels on CPU, 256 on CUDA]."),
    ] = None,
    videos_per_task: Annotated[
        Optional[int], typer.Option("--videos-per-task", min=1, help="Videos per task and shard [default: 8; 64 on CUDA].")
    ] = None,
    workspace: Workspace = None,
    scheduler: Scheduler = None,
    workers: Workers = None,
    decoder: Decoder = "auto",
    retry_failed: RetryFailed = False,
    strict: Strict = False,
    json_output: Json = False,
    verbose: Verbose = False,
) -> None:
    """Compute TV-L1 optical flow for every clip of a plan and cache it (uint8, bound 20).

    Example: vpipe flow --dataset ucf101 --plan li3d --pairs-per-batch 256
    """
    setup_logging(verbose)
    if encoding not in ("uint8", "float16"):
        raise typer.BadParameter("--encoding must be uint8 or float16")
    stage = FlowStage(
        dataset_workspace(dataset, workspace),
        plan=plan,
        stack=stack,
        encoding=encoding,
        bound=bound,
        tvl1_params=parse_key_values(option, "--option"),
        device=device,
        pairs_per_batch=pairs_per_batch,
        videos_per_task=videos_per_task,
        decoder=decoder,
    )
    report = run_single_stage(stage, device=device, scheduler=scheduler, workers=workers, retry_failed=retry_failed)
    finish([report], json_output, strict)


def register(app: typer.Typer) -> None:
    app.command("flow")(flow)
