"""The unit of work of the flow and extract stages: one video and its planned clips."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vpipe.video.views import Crop


@dataclass(frozen=True)
class ClipSpec:
    """One (clip, view) of a plan: which frames, and how they are resized, cropped, flipped."""

    clip: int
    view: int
    frames: tuple[int, ...]
    crop: Crop


@dataclass(frozen=True)
class VideoJob:
    video_id: str
    path: str
    num_frames: int
    clips: tuple[ClipSpec, ...]

    def needed_frames(self, with_successors: bool = False) -> np.ndarray:
        """Sorted unique frame indices to decode (with both frames of each flow pair if asked)."""
        frames = np.unique(np.concatenate([np.asarray(c.frames, dtype=np.int64) for c in self.clips]))
        if with_successors:
            pairs = [flow_pair(int(f), self.num_frames) for f in frames]
            frames = np.unique(np.asarray(pairs, dtype=np.int64).ravel())
        return frames


def flow_pair(frame: int, num_frames: int) -> tuple[int, int]:
    """(prev, next) frames whose forward flow is the motion at ``frame``.

    For the last frame there is no successor; the flow from the frame before it to
    the last frame is the best estimate of the motion there, so that pair is used.
    A one-frame video gets the pair (0, 0): zero flow.
    """
    if frame + 1 < num_frames:
        return frame, frame + 1
    return max(frame - 1, 0), frame


def jobs_from_plan(plan: pd.DataFrame, manifest: pd.DataFrame) -> dict[str, VideoJob]:
    """Group plan rows by video, in clip then view order."""
    videos = manifest.set_index("video_id")
    jobs: dict[str, VideoJob] = {}
    for video_id, rows in plan.sort_values(["video_id", "clip", "view"]).groupby("video_id", sort=True):
        clips = tuple(
            ClipSpec(
                clip=int(r.clip),
                view=int(r.view),
                frames=tuple(int(f) for f in r.frames),
                crop=Crop(
                    int(r.resize_h), int(r.resize_w), int(r.crop_y), int(r.crop_x), int(r.crop_h), int(r.crop_w),
                    bool(r.flip),
                ),
            )
            for r in rows.itertuples()
        )
        video = videos.loc[video_id]
        jobs[video_id] = VideoJob(str(video_id), str(video["path"]), int(video["num_frames"]), clips)
    return jobs
