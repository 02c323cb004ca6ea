"""What ``flow`` and ``extract`` share: the options about the videos they read, and running their stage.

Both read the clips of a plan in one dataset's workspace, decode them with one decoder,
pack ``--videos-per-task`` videos into a task (and a shard), and run their one stage on
the executor their device calls for. The options are declared once here, as one group
that stands after each command's own options in its ``--help``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from vpipe.cli.options import Compute, Decoder, Workspace, dataset_workspace, gpu_stage_executor, option_group
from vpipe.cli.stage_command import Reports, RunFlags

if TYPE_CHECKING:
    from vpipe.stages.planned_videos import PlannedVideoStage

VideosPerTask = Annotated[
    int | None,
    typer.Option("--videos-per-task", min=1, help="Videos per task and shard.", show_default="8; 64 on CUDA"),
]


@dataclass(frozen=True)
class VideoReading:
    """Where the plan's videos are recorded, how many a task takes, which decoder reads them."""

    videos_per_task: int | None = None
    workspace: Path | None = None
    decoder: str = "auto"


video_reading = option_group(
    "videos", VideoReading, {"videos_per_task": VideosPerTask, "workspace": Workspace, "decoder": Decoder}
)


def run_video_stage(
    make: Callable[..., PlannedVideoStage],
    dataset: str,
    videos: VideoReading,
    compute: Compute,
    flags: RunFlags,
    **options: Any,
) -> Reports:
    """Build a per-video stage (``make(workspace, **options)``) over ``dataset`` and run it
    alone: in this process on a local GPU, otherwise on the workers ``compute`` names."""
    from vpipe.pipeline.runner import run_stage

    workspace = dataset_workspace(dataset, videos.workspace)
    stage = make(workspace, videos_per_task=videos.videos_per_task, decoder=videos.decoder, **options)
    executor = gpu_stage_executor(stage.device, compute) or compute.executor()
    try:
        return [run_stage(stage, executor, retry_failed=flags.retry_failed)]
    finally:
        executor.close()
