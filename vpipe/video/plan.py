"""Plans: from one manifest row to the clips and views the extractor will read.

A plan row fixes everything random about a clip — its frame indices, crop box and
flip — when the plan is made, so that flow and feature extraction, reruns and other
machines all see the same pixels. Randomness comes from a generator seeded with a
SHA-256 of ``(seed, video_id, view)``: stable across processes and machines (Python's
``hash()`` is salted per process), and independent of the order videos are planned in.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import asdict, dataclass, fields

import numpy as np
import pyarrow as pa

from vpipe.errors import ConfigError
from vpipe.splits import SPLITS
from vpipe.video.sampling import TSN_SPACINGS, dense_windows, li3d_clips, strided_clips, tsn_indices, uniform_indices
from vpipe.video.views import Crop, center_view, random_view, scale_view

#: Temporal samplers, named after the papers' protocols (see ``vpipe.video.sampling``).
SAMPLERS = ("li3d", "uniform", "tsn", "dense", "strided")

#: The parameters each sampler reads; the others do not change its plan.
SAMPLER_PARAMS: dict[str, tuple[str, ...]] = {
    "li3d": ("need", "clips"),
    "uniform": ("count",),
    "tsn": ("segments", "frames_per_segment", "spacing"),
    "dense": ("length", "stride", "step"),
    "strided": ("frames", "step", "clips"),
}

#: Spatial and seeding parameters shared by every sampler.
SHARED_PARAMS = ("size", "short_side", "view0", "train_views", "test_views", "flip_prob", "seed")

#: Deterministic first views: centre crop or key-frame scaling (li3d-bilstm §3.1.2).
VIEW0_KINDS = ("center", "scale")

_COUNT_PARAMS = (
    *(param for params in SAMPLER_PARAMS.values() for param in params if param != "spacing"),
    "size",
    "short_side",
    "train_views",
    "test_views",
)

#: Bumped whenever the same config would plan different rows, so fingerprints change.
#: (tsn's ``spacing`` entered as a parameter, which changed tsn fingerprints alone.)
_PLAN_FORMAT = 1

#: Column types of ``plans/<sampler>.parquet``, one row per (video, clip, view).
PLAN_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),
        pa.field("clip", pa.int32(), nullable=False),
        pa.field("view", pa.int32(), nullable=False),
        pa.field("frames", pa.list_(pa.int32()), nullable=False),
        pa.field("resize_h", pa.int32(), nullable=False),
        pa.field("resize_w", pa.int32(), nullable=False),
        pa.field("crop_y", pa.int32(), nullable=False),
        pa.field("crop_x", pa.int32(), nullable=False),
        pa.field("crop_h", pa.int32(), nullable=False),
        pa.field("crop_w", pa.int32(), nullable=False),
        pa.field("flip", pa.bool_(), nullable=False),
    ]
)


@dataclass(frozen=True)
class SamplerConfig:
    """A sampler and its parameters; defaults follow the papers.

    - li3d: ``need`` = 64 frames per clip (the I3D input length; LI3D turns it into a
      τ×1024 sequence), ``clips`` per video (1 = Algorithm 1 exactly; more = evenly
      spaced windows, see :func:`vpipe.video.sampling.li3d_clips`);
    - uniform: ``count`` = 17 frames, the T of two-stream-deep-fusion-ln-lstm §4;
    - tsn: ``segments`` = 8 × ``frames_per_segment`` = 6 (vcm-sdd §4; 16 segments
      score higher but double the cache), ``spacing`` = ``"even"`` (frames spread over
      each segment, §4.1) or ``"consecutive"`` (see :func:`vpipe.video.sampling.tsn_indices`);
    - dense: windows of ``length`` = 64 frames every ``stride`` = 64, subsampled by
      ``step`` = 2 (ST-MANet §4.1);
    - strided: ``clips`` clips of ``frames`` = 16 frames every ``step`` frames, spread
      over the video (see :func:`vpipe.video.sampling.strided_clips`); ``step`` and
      ``clips`` are the dense and li3d parameters of the same meaning, so on its own the
      sampler takes one centred clip at step 2. The video transformers declare their
      papers' values as their default plans (VideoMAE: step 4, 5 clips).

    Spatial: frames are scaled to a short side of ``short_side`` and cropped to
    ``size`` × ``size``. View 0 is deterministic — a centre crop, or key-frame scaling
    when ``view0 = "scale"``; further views are random crops under the margin rule,
    flipped with probability ``flip_prob``. Training videos get ``train_views`` views,
    all other splits ``test_views``.
    """

    name: str = "li3d"
    need: int = 64
    clips: int = 1
    count: int = 17
    segments: int = 8
    frames_per_segment: int = 6
    spacing: str = "even"
    length: int = 64
    stride: int = 64
    step: int = 2
    frames: int = 16
    size: int = 224
    short_side: int = 256
    view0: str = "center"
    train_views: int = 1
    test_views: int = 1
    flip_prob: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in SAMPLERS:
            raise ConfigError(_unknown_sampler(self.name))
        for name in _COUNT_PARAMS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"sampler parameter {name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"sampler parameter seed must be a non-negative integer, got {self.seed!r}")
        if self.short_side % 2:
            raise ConfigError(
                f"sampler parameter short_side must be even, got {self.short_side}; use {self.short_side + 1}"
            )
        if self.short_side < self.size:
            raise ConfigError(
                f"sampler parameter short_side ({self.short_side}) is smaller than size ({self.size}); "
                f"set short_side >= size"
            )
        if self.spacing not in TSN_SPACINGS:
            raise ConfigError(
                f"sampler parameter spacing must be one of {', '.join(TSN_SPACINGS)}, got {self.spacing!r}"
                f"{_suggest(self.spacing, TSN_SPACINGS)}"
            )
        if self.view0 not in VIEW0_KINDS:
            raise ConfigError(
                f"sampler parameter view0 must be one of {', '.join(VIEW0_KINDS)}, got {self.view0!r}"
                f"{_suggest(self.view0, VIEW0_KINDS)}"
            )
        flip_prob = self.flip_prob
        if isinstance(flip_prob, bool) or not isinstance(flip_prob, (int, float)) or not 0 <= flip_prob <= 1:
            raise ConfigError(f"sampler parameter flip_prob must be a number in [0, 1], got {flip_prob!r}")

    def params(self) -> dict[str, object]:
        """The parameters that determine this sampler's plan (its own and the shared ones)."""
        values = asdict(self) | {"flip_prob": float(self.flip_prob)}
        return {"name": self.name} | {k: values[k] for k in (*SAMPLER_PARAMS[self.name], *SHARED_PARAMS)}

    def fingerprint(self) -> str:
        """A stable 16-hex-digit hash of :meth:`params`.

        Parameters of other samplers are left out, so changing ``count`` does not
        invalidate an li3d plan; the plan format version is included, so a change in
        the sampling rules does.
        """
        payload = {"format": _PLAN_FORMAT, **self.params()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _suggest(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _unknown_sampler(name: str) -> str:
    return f"unknown sampler {name!r}{_suggest(name, SAMPLERS)}; choose one of {', '.join(SAMPLERS)}"


def sampler_config(name: str, **overrides: object) -> SamplerConfig:
    """Build a :class:`SamplerConfig` for ``name``, checking every override.

    An unknown parameter, or one that belongs to another sampler (which would be
    silently ignored), raises :class:`ConfigError` naming it and the valid choices.
    """
    if name not in SAMPLERS:
        raise ConfigError(_unknown_sampler(name))
    allowed = (*SAMPLER_PARAMS[name], *SHARED_PARAMS)
    every = [f.name for f in fields(SamplerConfig) if f.name != "name"]
    for key in overrides:
        if key in allowed:
            continue
        owner = next((s for s, params in SAMPLER_PARAMS.items() if key in params), None)
        if owner is not None:
            raise ConfigError(
                f"parameter {key!r} belongs to the {owner} sampler, not {name}; "
                f"{name} takes {', '.join(allowed)}"
            )
        raise ConfigError(
            f"unknown sampler parameter {key!r}{_suggest(key, every)}; {name} takes {', '.join(allowed)}"
        )
    return SamplerConfig(name=name, **overrides)


def view_rng(seed: int, video_id: str, view: int) -> np.random.Generator:
    """The generator for one (video, view): seeded from SHA-256 of its identity."""
    digest = hashlib.sha256(f"{seed}\x1f{video_id}\x1f{view}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def _clips(num_frames: int, split: str, config: SamplerConfig, rng: np.random.Generator) -> list[np.ndarray]:
    if config.name == "li3d":
        return li3d_clips(num_frames, config.need, config.clips, rng)
    if config.name == "uniform":
        return [uniform_indices(num_frames, config.count)]
    if config.name == "tsn":
        segment_rng = rng if split == "train" else None
        return [tsn_indices(num_frames, config.segments, config.frames_per_segment, segment_rng, config.spacing)]
    if config.name == "strided":
        return strided_clips(num_frames, config.frames, config.step, config.clips)
    return dense_windows(num_frames, config.length, config.stride, config.step)


def _view(view: int, height: int, width: int, config: SamplerConfig, rng: np.random.Generator) -> Crop:
    if view > 0:
        return random_view(height, width, config.size, config.short_side, rng, config.flip_prob)
    if config.view0 == "scale":
        return scale_view(height, width, config.size)
    return center_view(height, width, config.size, config.short_side)


def plan_video(
    video_id: str,
    num_frames: int,
    height: int,
    width: int,
    split: str,
    config: SamplerConfig,
) -> list[dict]:
    """The plan rows of one video: one per (clip, view), sorted by clip then view.

    Each view ``v`` has its own generator (:func:`view_rng`), drawn first for the
    temporal sampler and then for the crop, so views are independent augmentations
    and adding views never changes the existing ones. Random temporal choices:
    Algorithm 1's window (li3d, every split, as the paper defines no other) and TSN's
    per-segment offsets (training split only; other splits take segment centres).
    ``uniform``, ``dense`` and ``strided`` are deterministic. Rows match :data:`PLAN_SCHEMA`.
    """
    if not isinstance(video_id, str) or not video_id:
        raise ConfigError(f"video_id must be a non-empty string, got {video_id!r}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} for video {video_id}; use one of {', '.join(SPLITS)}")
    for name, value in (("num_frames", num_frames), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(
                f"{name} of video {video_id} must be a positive integer, got {value!r}; re-run probe"
            )
    views = config.train_views if split == "train" else config.test_views
    rows = []
    for view in range(views):
        rng = view_rng(config.seed, video_id, view)
        clips = _clips(int(num_frames), split, config, rng)
        crop = _view(view, int(height), int(width), config, rng)
        for clip, frames in enumerate(clips):
            rows.append(
                {
                    "video_id": video_id,
                    "clip": clip,
                    "view": view,
                    "frames": [int(i) for i in frames],
                    "resize_h": crop.resize_h,
                    "resize_w": crop.resize_w,
                    "crop_y": crop.y,
                    "crop_x": crop.x,
                    "crop_h": crop.h,
                    "crop_w": crop.w,
                    "flip": crop.flip,
                }
            )
    rows.sort(key=lambda row: (row["clip"], row["view"]))
    return rows
