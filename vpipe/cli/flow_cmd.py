"""``vpipe flow``: TV-L1 optical flow of every planned clip."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from vpipe.cli.extract_cmd import VideosPerTask
from vpipe.cli.options import Compute, Dataset, Decoder, Device, Option, Workspace, compute_options, dataset_workspace
from vpipe.cli.options import parse_key_values, run_single_stage
from vpipe.cli.stage_command import Reports, RunFlags, stage_command


@stage_command
@compute_options
def flow(
    dataset: Dataset,
    plan: Annotated[str, typer.Option("--plan", help="Plan whose clips are read (see `vpipe plan`).")] = "li3d",
    stack: Annotated[
        int, typer.Option("--stack", min=0, help="0: one field per clip frame (3D nets); L: L-field stacks per frame (VGG).")
    ] = 0,
    encoding: Annotated[
        Literal["uint8", "float16"],
        typer.Option(
            "--encoding",
            help="uint8 is bound-quantized (the I3D convention).",
        ),
    ] = "uint8",
    bound: Annotated[float, typer.Option("--bound", min=0.1, help="Quantization bound in pixels.")] = 20.0,
    option: Option = None,
    device: Device = "auto",
    pairs_per_batch: Annotated[
        int | None,
        typer.Option(
            "--pairs-per-batch", min=1, help="Frame pairs per TV-L1 batch.", show_default="~100k pixels on CPU, 256 on CUDA"
        ),
    ] = None,
    videos_per_task: VideosPerTask = None,
    workspace: Workspace = None,
    decoder: Decoder = "auto",
    *,
    compute: Compute,
    flags: RunFlags,
) -> Reports:
    """Compute TV-L1 optical flow for every clip of a plan and cache it (uint8, bound 20).

    -o sets a TV-L1 parameter, e.g. -o warps=3.

    Example: vpipe flow --dataset ucf101 --plan li3d --pairs-per-batch 256
    """
    from vpipe.stages.flow import FlowStage

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
    return [run_single_stage(stage, device=device, compute=compute, retry_failed=flags.retry_failed)]


def register(app: typer.Typer) -> None:
    app.command("flow")(flow)
