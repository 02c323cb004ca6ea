"""Turning a video's planned clips into uint8 model inputs, in loader processes.

Workers ship uint8 arrays (a quarter of float32's bytes); scaling and normalisation
happen on the model's device, where they are nearly free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vpipe.video.jobs import VideoJob
from vpipe.video.decode import read_frames
from vpipe.video.views import apply_crop


@dataclass(frozen=True)
class LoadedClip:
    clip: int
    view: int
    #: rgb: (T, h, w, 3); flow: (T, 2, h, w) pairs or (T, L, 2, h, w) stacks, uint8.
    data: np.ndarray


def crop_rgb_clips(job: VideoJob, decoder: str) -> list[LoadedClip]:
    """Decode each needed frame once, then resize, crop and flip it per (clip, view)."""
    needed = job.needed_frames()
    frames = read_frames(job.path, needed, decoder=decoder)
    position = {int(f): i for i, f in enumerate(needed)}
    clips = []
    for spec in job.clips:
        picked = frames[[position[f] for f in spec.frames]]
        clips.append(LoadedClip(spec.clip, spec.view, apply_crop(picked, spec.crop)))
    return clips


def stack_rgb_and_flow(rgb: list[LoadedClip], flow: list[LoadedClip]) -> list[LoadedClip]:
    """Each clip's frames and flow as one (T, h, w, 5) uint8 array: r, g, b, u, v codes.

    Both come from the same plan row, so frame ``t`` and flow field ``t`` (the motion
    at that frame) cover the same resized, cropped and flipped pixels.
    """
    fields = {(c.clip, c.view): c.data for c in flow}
    stacked = []
    for clip in rgb:
        field = fields[(clip.clip, clip.view)]
        if field.shape[:1] + field.shape[2:] != clip.data.shape[:3] or field.shape[1] != 2:
            raise ValueError(
                f"clip {clip.clip} view {clip.view}: cached flow {field.shape} does not match frames "
                f"{clip.data.shape}; rerun `vpipe flow` with this plan"
            )
        stacked.append(LoadedClip(clip.clip, clip.view, np.concatenate([clip.data, field.transpose(0, 2, 3, 1)], -1)))
    return stacked
