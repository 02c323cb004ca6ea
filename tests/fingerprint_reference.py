"""Item fingerprint parts as the stages once built them, one video at a time.

The stages now compute fingerprints over whole columns; these plain per-video forms
are the reference they must equal, or every stored item would turn stale.
"""

from __future__ import annotations

from dataclasses import asdict

from vpipe.video.jobs import VideoJob


def clip_signature(job: VideoJob) -> list:
    """What a video's planned clips are, as fingerprinted: (clip, view, frames, crop fields)."""
    return [(c.clip, c.view, c.frames, asdict(c.crop)) for c in job.clips]
