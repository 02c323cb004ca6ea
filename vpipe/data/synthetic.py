"""The built-in synthetic dataset: small, deterministic, and hard in known ways.

It serves two purposes. It is the demo dataset (``vpipe run --dataset synthetic``
runs the whole chain in minutes on a laptop CPU), and it is a benchmark whose
classes are built so that each family can only be solved by one kind of model:

- ``appearance`` (``Disk``, ``Triangle``, ``CheckeredDisk``): the classes differ
  only in the shape or texture of the moving object. Motion, size and colour come
  from one distribution shared by the family, so motion features alone are at chance.
- ``direction`` (``MoveLeft``, ``MoveRight``, ``MoveUp``, ``MoveDown``): one orange
  disk crossing the frame; only the direction of travel differs.
- ``rhythm`` (``BounceSlow``, ``BounceMedium``, ``BounceFast``): the same orange disk
  oscillating vertically with a period of about 24, 12 or 6 frames (±15 % per video),
  like walking, jogging and running. Direction and rhythm together are the
  motion-only classes: one appearance, so still frames are at chance.
- ``order`` (``Grow``/``Shrink``, ``RedThenBlue``/``BlueThenRed``): each second class
  is rendered as the first class's frame sequence played backwards, so both classes
  contain the same frames in distribution and no order-less pooling of per-frame
  features can separate them. ``Grow``/``Shrink`` leaves a local cue (expanding vs
  contracting flow, visible to a clip-level 3D backbone); ``RedThenBlue`` is one abrupt
  colour change, so only a clip straddling it or a temporal model over the whole
  video sees the order.

Every video carries the same nuisances: a tileable textured background that pans,
integer camera jitter shared by background and object, Gaussian pixel noise, a
length of 10-14 frames (one video in four, shorter than a 16-frame clip so that
samplers must loop) or 20-80 frames, and a 4:3 size between 112x84 and 160x120.

On-disk layout, written by :func:`generate_synthetic`::

    root/videos/<ClassName>/<ClassName>_<k:03d>.avi   MPEG-4 Part 2 with B-frames, 25 fps
    root/splits.csv                                  path,label,split (path relative to root)
    root/synthetic.json                              generation parameters, written last

Everything is drawn from ``numpy.random.default_rng`` seeded per video from a
BLAKE2 hash of ``(seed, video name)``, so a tree is identical on every machine and
adding videos never changes the existing ones.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpipe.artifacts import atomic_write_text
from vpipe.data.base import MainJobDefaults, VideoEntry
from vpipe.errors import ConfigError, DatasetError

#: Class families, in label order.
FAMILIES: dict[str, tuple[str, ...]] = {
    "appearance": ("Disk", "Triangle", "CheckeredDisk"),
    "direction": ("MoveLeft", "MoveRight", "MoveUp", "MoveDown"),
    "rhythm": ("BounceSlow", "BounceMedium", "BounceFast"),
    "order": ("Grow", "Shrink", "RedThenBlue", "BlueThenRed"),
}
#: Class names; a video's label is the index of its class here.
CLASS_NAMES: tuple[str, ...] = tuple(name for names in FAMILIES.values() for name in names)
#: Classes rendered as another class's frames reversed: reversed class -> forward class.
REVERSED_PAIRS: dict[str, str] = {"Shrink": "Grow", "BlueThenRed": "RedThenBlue"}

DEFAULT_VIDEOS_PER_CLASS = 10
DEFAULT_TEST_FRACTION = 0.3
FPS = 25
#: Bumped whenever rendering changes, so that trees made by an older version regenerate.
GENERATOR_VERSION = 1

_SHORT_PROBABILITY = 0.25
_TEXTURE_SIZE = 256
_MOTION_COLOUR = (255.0, 140.0, 0.0)
_RED = (220.0, 30.0, 30.0)
_BLUE = (30.0, 60.0, 230.0)
_RHYTHM_PERIODS = {"BounceSlow": 24.0, "BounceMedium": 12.0, "BounceFast": 6.0}
_DIRECTIONS = {"MoveLeft": (-1, 0), "MoveRight": (1, 0), "MoveUp": (0, -1), "MoveDown": (0, 1)}


@dataclass(frozen=True)
class _Object:
    """The moving object of one video, per frame: centre, radius and colour in pixels."""

    cx: np.ndarray
    cy: np.ndarray
    radius: np.ndarray
    colour: np.ndarray
    shape: str = "disk"
    checkered: bool = False


#: Draws one class's object track for a frame height, width and length.
_Builder = Callable[[np.random.Generator, int, int, int], _Object]


def video_seed(seed: int, video_name: str) -> int:
    """A per-video seed that is stable across processes, machines and Python versions.

    Python's ``hash()`` is salted per process, so it would make trees differ between runs.
    """
    digest = hashlib.blake2b(f"{seed}:{video_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def render_video(class_name: str, seed: int, *, num_frames: int | None = None) -> np.ndarray:
    """Render one video of ``class_name`` in memory as uint8 frames of shape (T, H, W, 3).

    ``num_frames`` overrides the drawn length (the other draws are unchanged), for
    measurements that need long videos. A class of :data:`REVERSED_PAIRS` returns its
    forward class's frames for the same seed in reverse order, exactly.
    """
    if class_name in REVERSED_PAIRS:
        return render_video(REVERSED_PAIRS[class_name], seed, num_frames=num_frames)[::-1].copy()
    if class_name not in _BUILDERS:
        raise ConfigError(f"unknown synthetic class {class_name!r}; choose one of {CLASS_NAMES}")
    rng = np.random.default_rng(seed)
    height, width, length = _draw_geometry(rng)
    length = length if num_frames is None else num_frames
    jitter = np.clip(np.rint(rng.normal(0.0, 0.8, size=(length, 2))), -2, 2).astype(np.int64)
    background = _background(rng, height, width, length, jitter)
    obj = _BUILDERS[class_name](rng, height, width, length)
    frames = _composite(background, obj, jitter)
    frames += rng.standard_normal(frames.shape, dtype=np.float32) * np.float32(rng.uniform(2.0, 5.0))
    return np.clip(frames + 0.5, 0, 255).astype(np.uint8)


def _draw_geometry(rng: np.random.Generator) -> tuple[int, int, int]:
    """Frame size (4:3, width a multiple of 8 so both sides are even) and length."""
    width = 8 * int(rng.integers(14, 21))
    if rng.random() < _SHORT_PROBABILITY:
        length = int(rng.integers(10, 15))
    else:
        length = int(rng.integers(20, 81))
    return width * 3 // 4, width, length


def _texture(rng: np.random.Generator) -> np.ndarray:
    """A tileable, low-saturation texture: filtered noise plus a grating.

    Periodic by construction (FFT filtering, integer grating frequencies), so panning
    by modular indexing never shows a seam. Its low saturation keeps the saturated
    object separable by colour, which the tests use as an independent object mask.
    """
    size = _TEXTURE_SIZE
    freq = np.fft.fftfreq(size)
    radial = np.hypot(freq[:, None], freq[None, :])
    cutoff = rng.uniform(0.03, 0.08)
    noise = np.fft.ifft2(np.fft.fft2(rng.standard_normal((size, size))) * np.exp(-((radial / cutoff) ** 2)))
    blobs = noise.real / noise.real.std()
    ky, kx = rng.integers(2, 9, size=2)
    coords = np.arange(size) / size
    grating = np.sin(2 * np.pi * (ky * coords[:, None] + kx * coords[None, :]) + rng.uniform(0, 2 * np.pi))
    grey = np.clip(125.0 + 35.0 * blobs + 20.0 * grating, 40.0, 210.0)
    tint = rng.uniform(0.88, 1.12, size=3)
    return (grey[..., None] * tint).astype(np.float32)


def _background(
    rng: np.random.Generator, height: int, width: int, length: int, jitter: np.ndarray
) -> np.ndarray:
    """The texture seen through a window that pans at a constant velocity, plus jitter."""
    texture = _texture(rng)
    angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 1.5)
    steps = np.arange(length)
    offset_y = np.rint(speed * np.sin(angle) * steps).astype(np.int64) + jitter[:, 1]
    offset_x = np.rint(speed * np.cos(angle) * steps).astype(np.int64) + jitter[:, 0]
    rows = (np.arange(height)[None, :] + offset_y[:, None]) % _TEXTURE_SIZE
    cols = (np.arange(width)[None, :] + offset_x[:, None]) % _TEXTURE_SIZE
    return texture[rows[:, :, None], cols[:, None, :]]


def _signed_distance(shape: str, dx: np.ndarray, dy: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Approximate signed distance (pixels, negative inside) of shapes of equal area."""
    if shape == "disk":
        return np.hypot(dx, dy) - radius
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) - radius * np.sqrt(np.pi) / 2
    # Equilateral triangle pointing up; inradius chosen so that its area is pi * r^2.
    inradius = radius * np.sqrt(np.pi / (3 * np.sqrt(3)))
    slanted = np.abs(np.sqrt(3) / 2 * dx) - 0.5 * dy
    return np.maximum(dy, slanted) - inradius


def _composite(background: np.ndarray, obj: _Object, jitter: np.ndarray) -> np.ndarray:
    """Alpha-blend the anti-aliased object over the background, all frames at once."""
    height, width = background.shape[1:3]
    cx = (obj.cx + jitter[:, 0]).astype(np.float32)[:, None, None]
    cy = (obj.cy + jitter[:, 1]).astype(np.float32)[:, None, None]
    dx = np.arange(width, dtype=np.float32)[None, None, :] - cx
    dy = np.arange(height, dtype=np.float32)[None, :, None] - cy
    radius = obj.radius.astype(np.float32)[:, None, None]
    alpha = np.clip(0.5 - _signed_distance(obj.shape, dx, dy, radius), 0.0, 1.0)[..., None]
    colour = obj.colour.astype(np.float32)[:, None, None, :]
    if obj.checkered:
        cell = radius / 2
        dark = (np.floor(dx / cell) + np.floor(dy / cell)) % 2
        colour = colour * (1.0 - 0.55 * dark[..., None])
    return background * (1.0 - alpha) + colour * alpha


def _fold(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Reflect positions into [low, high], as a ball bouncing off walls."""
    span = high - low
    phase = np.mod(values - low, 2 * span)
    return low + np.where(phase > span, 2 * span - phase, phase)


def _radius(rng: np.random.Generator, height: int) -> float:
    """Object radius: a diameter of 24-34 % of the frame height survives 112x112 crops."""
    return rng.uniform(0.12, 0.17) * height


def _drift(
    rng: np.random.Generator, height: int, width: int, length: int, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """Straight drift at a random angle and speed, bouncing off the frame edges."""
    angle, speed = rng.uniform(0, 2 * np.pi), rng.uniform(0.5, 2.0)
    steps = np.arange(length)
    x0, y0 = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
    cx = _fold(x0 + speed * np.cos(angle) * steps, margin, width - margin)
    cy = _fold(y0 + speed * np.sin(angle) * steps, margin, height - margin)
    return cx, cy


def _random_hue(rng: np.random.Generator) -> np.ndarray:
    """A saturated colour of uniform hue (HSV with S = 1)."""
    hue, value = rng.uniform(0, 6), rng.uniform(200.0, 255.0)
    ramp = np.clip(np.abs(np.mod(hue + np.array([0.0, 4.0, 2.0]), 6) - 3) - 1, 0, 1)
    return value * ramp


def _appearance(shape: str, checkered: bool) -> _Builder:
    def build(rng: np.random.Generator, height: int, width: int, length: int) -> _Object:
        radius = _radius(rng, height)
        cx, cy = _drift(rng, height, width, length, radius)
        colour = np.tile(_random_hue(rng), (length, 1))
        return _Object(cx, cy, np.full(length, radius), colour, shape, checkered)

    return build


def _direction(class_name: str) -> _Builder:
    step_x, step_y = _DIRECTIONS[class_name]

    def build(rng: np.random.Generator, height: int, width: int, length: int) -> _Object:
        radius = _radius(rng, height)
        along, across = (width, height) if step_x else (height, width)
        travel = rng.uniform(0.35, 0.6) * along
        start = rng.uniform(radius, along - radius - travel)
        progress = start + travel * np.linspace(0.0, 1.0, length)
        if step_x + step_y < 0:
            progress = along - progress
        fixed = np.full(length, rng.uniform(radius, across - radius))
        cx, cy = (progress, fixed) if step_x else (fixed, progress)
        return _Object(cx, cy, np.full(length, radius), np.tile(_MOTION_COLOUR, (length, 1)))

    return build


def _rhythm(class_name: str) -> _Builder:
    base_period = _RHYTHM_PERIODS[class_name]

    def build(rng: np.random.Generator, height: int, width: int, length: int) -> _Object:
        radius = _radius(rng, height)
        period = base_period * rng.uniform(0.85, 1.15)
        amplitude = rng.uniform(0.12, 0.16) * height
        centre = rng.uniform(radius + amplitude, height - radius - amplitude)
        steps = np.arange(length)
        cy = centre + amplitude * np.sin(2 * np.pi * steps / period + rng.uniform(0, 2 * np.pi))
        x0, drift = rng.uniform(radius, width - radius), rng.uniform(-0.3, 0.3)
        cx = _fold(x0 + drift * steps, radius, width - radius)
        return _Object(cx, cy, np.full(length, radius), np.tile(_MOTION_COLOUR, (length, 1)))

    return build


def _grow(rng: np.random.Generator, height: int, width: int, length: int) -> _Object:
    """Radius rising linearly from 4-7 % to 17-22 % of the height while drifting slowly."""
    start, end = rng.uniform(0.04, 0.07) * height, rng.uniform(0.17, 0.22) * height
    cx, cy = _drift(rng, height, width, length, end)
    radius = start + (end - start) * np.linspace(0.0, 1.0, length)
    return _Object(cx, cy, radius, np.tile(_random_hue(rng), (length, 1)), "square")


def _red_then_blue(rng: np.random.Generator, height: int, width: int, length: int) -> _Object:
    """A drifting disk that turns from red to blue at 35-65 % of the video."""
    radius = _radius(rng, height)
    cx, cy = _drift(rng, height, width, length, radius)
    switch = int(round(rng.uniform(0.35, 0.65) * length))
    colour = np.where((np.arange(length) < switch)[:, None], _RED, _BLUE)
    return _Object(cx, cy, np.full(length, radius), colour)


_BUILDERS: dict[str, _Builder] = {
    "Disk": _appearance("disk", checkered=False),
    "Triangle": _appearance("triangle", checkered=False),
    "CheckeredDisk": _appearance("disk", checkered=True),
    **{name: _direction(name) for name in FAMILIES["direction"]},
    **{name: _rhythm(name) for name in FAMILIES["rhythm"]},
    "Grow": _grow,
    "RedThenBlue": _red_then_blue,
}


def generate_synthetic(
    root: str | Path,
    *,
    seed: int = 0,
    videos_per_class: int = DEFAULT_VIDEOS_PER_CLASS,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    overwrite: bool = False,
) -> Path:
    """Write the synthetic dataset under ``root`` unless an identical tree is already there.

    ``synthetic.json`` is written last and records the parameters: a tree whose record
    matches and whose listed videos all exist is reused as is, so the pipeline can call
    this before every run; anything else (other parameters, an interrupted generation,
    ``overwrite=True``) is regenerated from scratch. The last ``round(videos_per_class *
    test_fraction)`` videos of each class (at least one) form the test split; the
    videos are independent draws, so a fixed choice is as good as a random one.
    """
    if videos_per_class < 2:
        raise ConfigError(
            f"videos_per_class must be at least 2 (one train, one test), got {videos_per_class}"
        )
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be strictly between 0 and 1, got {test_fraction}")
    root = Path(root)
    params = {
        "generator": GENERATOR_VERSION,
        "seed": int(seed),
        "videos_per_class": int(videos_per_class),
        "test_fraction": float(test_fraction),
    }
    if not overwrite and _is_complete(root, params):
        return root
    from vpipe.video.write import write_video  # PyAV: only when the videos are (re)written

    _clear(root)
    num_test = min(videos_per_class - 1, max(1, round(videos_per_class * test_fraction)))
    rows = []
    for label, class_name in enumerate(CLASS_NAMES):
        for k in range(videos_per_class):
            video_name = f"{class_name}_{k:03d}"
            relative = f"videos/{class_name}/{video_name}.avi"
            frames = render_video(class_name, video_seed(seed, video_name))
            write_video(root / relative, frames, fps=FPS, codec="mpeg4")
            split = "test" if k >= videos_per_class - num_test else "train"
            rows.append((relative, label, split))
    atomic_write_text(root / "splits.csv", "path,label,split\n" + "".join(f"{p},{l},{s}\n" for p, l, s in rows))
    atomic_write_text(root / "synthetic.json", json.dumps(params, indent=2) + "\n")
    return root


def _is_complete(root: Path, params: dict) -> bool:
    try:
        recorded = json.loads((root / "synthetic.json").read_text())
        entries = _read_splits(root)
    except (OSError, ValueError, DatasetError):
        return False
    return recorded == params and all(entry.path.is_file() for entry in entries)


def _clear(root: Path) -> None:
    """Remove a previous synthetic tree, refusing to delete anything it did not write.

    The record goes first, so an interrupted regeneration is never mistaken for a
    complete tree.
    """
    videos = root / "videos"
    foreign = next(_foreign_paths(videos), None) if videos.exists() else None
    if foreign is not None:
        raise DatasetError(
            f"{foreign} is not a synthetic video; point the synthetic dataset at an empty "
            "directory or one that holds only a synthetic tree"
        )
    (root / "synthetic.json").unlink(missing_ok=True)
    (root / "splits.csv").unlink(missing_ok=True)
    if videos.exists():
        shutil.rmtree(videos)


def _foreign_paths(videos: Path) -> Iterator[Path]:
    """Paths under ``videos`` other than class folders and the ``.avi`` files in them."""
    for path in videos.rglob("*"):
        parts = path.relative_to(videos).parts
        if parts[0] not in CLASS_NAMES or len(parts) > 2 or (len(parts) == 2 and path.suffix != ".avi"):
            yield path


def _read_splits(root: Path) -> list[VideoEntry]:
    """Parse ``splits.csv``, checking every row against the class list."""
    splits = root / "splits.csv"
    if not splits.is_file():
        raise DatasetError(
            f"{splits} not found: the synthetic dataset has not been generated there; "
            "run generate_synthetic(root) (the pipeline does so on first use)"
        )
    entries = []
    with splits.open(newline="") as handle:
        reader = csv.reader(handle)
        if next(reader, None) != ["path", "label", "split"]:
            raise DatasetError(f"{splits}:1: expected the header 'path,label,split'")
        for line, row in enumerate(reader, start=2):
            if len(row) != 3 or not row[1].isdigit() or row[2] not in ("train", "test"):
                raise DatasetError(f"{splits}:{line}: expected '<path>,<label>,train|test', got {row}")
            relative, label = Path(row[0]), int(row[1])
            if label >= len(CLASS_NAMES) or relative.parent.name != CLASS_NAMES[label]:
                raise DatasetError(f"{splits}:{line}: label {label} does not match the folder of {relative}")
            video_id = f"{relative.parent.name}/{relative.stem}"
            entries.append(VideoEntry(video_id, root / relative, label, CLASS_NAMES[label], row[2]))
    return entries


class SyntheticDataset:
    """Adapter for the built-in synthetic tree (see the module docstring for its layout)."""

    name = "synthetic"
    summary = (
        f"Built-in synthetic videos: {len(CLASS_NAMES)} classes in appearance, direction, "
        "rhythm and temporal-order families; generated on first use"
    )
    split_numbers = (1,)
    #: vpipe writes these videos itself (:func:`vpipe.data.base.generator`): no --root, and
    #: ``--videos-per-class`` / ``--synthetic-seed`` are recorded and passed on here.
    generate = staticmethod(generate_synthetic)
    #: The videos are 112-160 px wide and 10-80 frames long: small crops and short clips
    #: keep the whole main job within minutes on a laptop CPU; ~100 train videos x 4 steps
    #: are too few descriptors for the paper's K = 128, so K = 16.
    main_job = MainJobDefaults(li3d_options={"need": 16, "clips": 2, "size": 112, "short_side": 128}, clusters=16)

    def prepare(self, root: Path, *, split: int = 1) -> list[VideoEntry]:
        """List the generated videos; ``video_id`` is ``<ClassName>/<ClassName>_<k>``."""
        if split not in self.split_numbers:
            raise DatasetError(f"the synthetic dataset has only split 1, got split {split}")
        return _read_splits(Path(root))
