"""``vpipe backbones`` and ``vpipe extract``: the feature cache."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from vpipe import catalog
from vpipe.cli.options import Backbone, Compute, Dataset, Device, Json, Option, compute_options, parse_key_values, show
from vpipe.cli.stage_command import Reports, RunFlags, stage_command
from vpipe.cli.video_stage import VideoReading, run_video_stage, video_reading

Stream = Annotated[Literal["rgb", "flow"], typer.Option("--stream", help="flow needs `vpipe flow` first.")]
Plan = Annotated[
    str | None,
    typer.Option(
        "--plan",
        help="Plan whose clips are read (see `vpipe plan`).",
        show_default="the backbone's plan (`vpipe backbones`)",
    ),
]
Weights = Annotated[
    Path | None,
    typer.Option("--weights", help="Local checkpoint (.pt, .pth, .safetensors).", show_default="random init"),
]


def backbones(json_output: Json = False) -> None:
    """List every backbone with its parameter count, input, cached layers and, where the
    published checkpoints restrict use, their licence.

    Example: vpipe backbones --json
    """
    show(catalog.describe_backbones(), _print_backbones, json_output=json_output)


def _print_backbones(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        layers = ", ".join(f"{k} {tuple(v)}" for k, v in row["layers"].items())
        licence = f"  [licence: {row['licence']}]" if row["licence"] else ""
        typer.echo(
            f"{row['name']:<10} {row['params'] / 1e6:7.2f}M  {row['input']:<6} {tuple(row['input_shape'])}  -> {layers}{licence}"
        )
        typer.echo(f"{'':<10} plan {describe_plan(row['plan'])}")


def describe_plan(plan: dict[str, object]) -> str:
    """``videomae = strided frames=16 step=4 clips=5, 224² centre crop of short side 224``:
    the sampler's own parameters, then the crop of the first view."""
    from vpipe.video.plan import SAMPLER_PARAMS

    own = " ".join(f"{k}={plan[k]}" for k in SAMPLER_PARAMS[str(plan["sampler"])])
    return f"{plan['name']} = {plan['sampler']} {own}, {plan['size']}² {plan['view0']} crop of short side {plan['short_side']}"


@stage_command
@compute_options
@video_reading
def extract(
    dataset: Dataset,
    backbone: Backbone = "li3d",
    stream: Stream = "rgb",
    plan: Plan = None,
    weights: Weights = None,
    option: Option = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Feature set name.", show_default="<backbone>-<stream>")
    ] = None,
    device: Device = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Clips per forward pass.")] = 8,
    decode_workers: Annotated[int | None, typer.Option("--decode-workers", min=0, help="Decoding processes kept ahead of the model.", show_default="up to 4 on CUDA, 0 on CPU")] = None,
    *,
    videos: VideoReading,
    compute: Compute,
    flags: RunFlags,
) -> Reports:
    """Run a backbone over every planned clip and cache its features in HDF5 shards.

    On a CUDA machine without --scheduler, one process drives the GPU and
    --decode-workers processes decode; otherwise videos are spread over dask workers.
    -o sets a backbone option, e.g. -o grid=[4,4].

    Example: vpipe extract --dataset ucf101 --backbone li3d --weights rgb_imagenet.pt --decode-workers 8
    """
    from vpipe.catalog import backbone_plan
    from vpipe.stages.extract import ExtractStage

    return run_video_stage(
        ExtractStage,
        dataset,
        videos,
        compute,
        flags,
        backbone=backbone,
        stream=stream,
        plan=plan or backbone_plan(backbone).name,
        weights=weights,
        options=parse_key_values(option, "--option"),
        name=name,
        device=device,
        batch_size=batch_size,
        decode_workers=decode_workers,
    )


def register(app: typer.Typer) -> None:
    app.command("backbones")(backbones)
    app.command("extract")(extract)
