"""``vpipe flow``: TV-L1 optical flow of every planned clip."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from vpipe.cli.options import Compute, Dataset, Device, Option, compute_options, parse_key_values
from vpipe.cli.stage_command import Reports, RunFlags, stage_command
from vpipe.cli.video_stage import VideoReading, run_video_stage, video_reading


@stage_command
@compute_options
@video_reading
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
    *,
    videos: VideoReading,
    compute: Compute,
    flags: RunFlags,
) -> Reports:
    """Compute TV-L1 optical flow for every clip of a plan and cache it (uint8, bound 20).

    -o sets a TV-L1 parameter, e.g. -o warps=3.

    Example: vpipe flow --dataset ucf101 --plan li3d --pairs-per-batch 256
    """
    from vpipe.stages.flow import FlowStage

    return run_video_stage(
        FlowStage,
        dataset,
        videos,
        compute,
        flags,
        plan=plan,
        stack=stack,
        encoding=encoding,
        bound=bound,
        tvl1_params=parse_key_values(option, "--option"),
        device=device,
        pairs_per_batch=pairs_per_batch,
    )


def register(app: typer.Typer) -> None:
    app.command("flow")(flow)
