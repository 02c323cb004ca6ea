"""The synthetic dataset: determinism, idempotence, split file, and class semantics.

Class semantics are checked on the rendered pixels with an independent object
detector (the object is the only saturated thing in a frame), never by reading
back the renderer's own parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vpipe.data import synthetic
from vpipe.data.synthetic import (
    CLASS_NAMES,
    FAMILIES,
    REVERSED_PAIRS,
    SyntheticDataset,
    generate_synthetic,
    render_video,
)
from vpipe.errors import ConfigError, DatasetError
from vpipe.video.decode import iter_frames

TINY = {"videos_per_class": 2}
MOTION_CLASSES = FAMILIES["direction"] + FAMILIES["rhythm"]


def decode(path: Path) -> np.ndarray:
    return np.stack(list(iter_frames(path)))


def object_mask(frames: np.ndarray) -> np.ndarray:
    """Saturated pixels: the object is saturated, background and noise are near grey."""
    channels = frames.astype(np.int16)
    return channels.max(axis=-1) - channels.min(axis=-1) > 110


def centroids(frames: np.ndarray) -> np.ndarray:
    """(T, 2) object centroid (x, y) per frame."""
    mask = object_mask(frames)
    ys, xs = np.mgrid[: mask.shape[1], : mask.shape[2]]
    area = mask.sum(axis=(1, 2))
    assert area.min() > 0, "object lost"
    return np.stack([(mask * xs).sum(axis=(1, 2)) / area, (mask * ys).sum(axis=(1, 2)) / area], axis=1)


def all_files(root: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in root.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("synthetic"), seed=0, **TINY)


def test_class_names_are_families_in_order() -> None:
    assert CLASS_NAMES == tuple(name for names in FAMILIES.values() for name in names)
    assert len(set(CLASS_NAMES)) == len(CLASS_NAMES)
    assert 10 <= len(CLASS_NAMES) <= 14


def test_same_seed_decodes_to_identical_frames_and_another_seed_differs(tree: Path, tmp_path: Path) -> None:
    again = generate_synthetic(tmp_path / "again", seed=0, **TINY)
    other = generate_synthetic(tmp_path / "other", seed=1, **TINY)
    videos = sorted(path.relative_to(tree) for path in tree.rglob("*.avi"))
    assert videos == sorted(path.relative_to(again) for path in again.rglob("*.avi"))
    differing = 0
    for relative in videos:
        reference = decode(tree / relative)
        np.testing.assert_array_equal(reference, decode(again / relative), err_msg=str(relative))
        alternative = decode(other / relative)
        differing += alternative.shape != reference.shape or not np.array_equal(alternative, reference)
    assert differing == len(videos)
    assert (tree / "splits.csv").read_bytes() == (again / "splits.csv").read_bytes()


def test_second_call_rewrites_nothing(tree: Path) -> None:
    before = all_files(tree)
    assert generate_synthetic(tree, seed=0, **TINY) == tree
    assert all_files(tree) == before


def test_changed_parameters_or_partial_tree_regenerate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rendered: list[str] = []

    def tiny_render(class_name: str, seed: int) -> np.ndarray:
        rendered.append(class_name)
        return np.full((2, 16, 16, 3), seed % 256, dtype=np.uint8)

    monkeypatch.setattr(synthetic, "render_video", tiny_render)
    everything = len(CLASS_NAMES) * TINY["videos_per_class"]
    root = generate_synthetic(tmp_path, seed=0, **TINY)
    assert len(rendered) == everything
    generate_synthetic(root, seed=0, **TINY)
    assert len(rendered) == everything
    victim = next(root.rglob("*.avi"))
    victim.unlink()
    generate_synthetic(root, seed=0, **TINY)
    assert victim.is_file() and len(rendered) == 2 * everything
    generate_synthetic(root, seed=0, videos_per_class=2, test_fraction=0.5)
    assert len(rendered) == 3 * everything
    assert json.loads((root / "synthetic.json").read_text())["test_fraction"] == 0.5
    generate_synthetic(root, seed=0, videos_per_class=2, test_fraction=0.5, overwrite=True)
    assert len(rendered) == 4 * everything
    (root / "synthetic.json").unlink()
    generate_synthetic(root, seed=0, videos_per_class=2, test_fraction=0.5)
    assert len(rendered) == 5 * everything


def test_refuses_to_delete_foreign_files(tmp_path: Path) -> None:
    notes = tmp_path / "videos" / "notes.txt"
    notes.parent.mkdir()
    notes.write_text("mine")
    with pytest.raises(DatasetError, match="not a synthetic video"):
        generate_synthetic(tmp_path, **TINY)
    assert notes.read_text() == "mine"


@pytest.mark.parametrize("params", [{"videos_per_class": 1}, {"test_fraction": 0.0}, {"test_fraction": 1.0}])
def test_rejects_bad_parameters(tmp_path: Path, params: dict) -> None:
    with pytest.raises(ConfigError):
        generate_synthetic(tmp_path, **params)


def test_prepare_lists_every_video_with_consistent_labels_and_splits(tree: Path) -> None:
    entries = SyntheticDataset().prepare(tree)
    on_disk = sorted(tree.rglob("*.avi"))
    assert sorted(entry.path for entry in entries) == on_disk
    for entry in entries:
        folder = entry.path.parent.name
        assert entry.label == CLASS_NAMES.index(folder)
        assert entry.label_name == folder
        assert entry.video_id == f"{folder}/{entry.path.stem}"
        assert entry.path.stem.startswith(f"{folder}_")
    labels = {entry.label for entry in entries}
    assert labels == set(range(len(CLASS_NAMES)))
    for label in labels:
        splits = {entry.split for entry in entries if entry.label == label}
        assert splits == {"train", "test"}


def test_prepare_without_a_tree_says_how_to_generate(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="generate_synthetic"):
        SyntheticDataset().prepare(tmp_path)
    assert SyntheticDataset.generate is generate_synthetic


def test_lengths_include_short_videos_and_sizes_vary(tree: Path) -> None:
    shapes = [decode(path).shape for path in sorted(tree.rglob("*.avi"))]
    lengths = [shape[0] for shape in shapes]
    sizes = {(shape[2], shape[1]) for shape in shapes}
    assert min(lengths) >= 10 and max(lengths) <= 80
    assert any(length < 16 for length in lengths)
    assert any(length > 40 for length in lengths)
    assert len(sizes) >= 3
    for width, height in sizes:
        assert 112 <= width <= 160 and 84 <= height <= 120
        assert width % 2 == 0 and height % 2 == 0


@pytest.mark.parametrize("forward, backward", [(a, b) for b, a in REVERSED_PAIRS.items()])
def test_reversed_class_is_forward_class_played_backwards(forward: str, backward: str) -> None:
    for seed in range(3):
        frames = render_video(forward, seed)
        np.testing.assert_array_equal(render_video(backward, seed), frames[::-1])
        assert not np.array_equal(frames, frames[::-1])


def test_grow_grows_and_red_then_blue_turns_blue() -> None:
    for seed in range(3):
        area = object_mask(render_video("Grow", seed, num_frames=30)).sum(axis=(1, 2))
        assert area[-1] > 4 * area[0]
        frames = render_video("RedThenBlue", seed, num_frames=30).astype(float)
        mask = object_mask(frames.astype(np.uint8))
        first, last = frames[0][mask[0]].mean(axis=0), frames[-1][mask[-1]].mean(axis=0)
        assert first[0] > first[2] + 100 and last[2] > last[0] + 100


def test_direction_classes_share_appearance_and_differ_in_motion() -> None:
    expected = {"MoveLeft": (-1, 0), "MoveRight": (1, 0), "MoveUp": (0, -1), "MoveDown": (0, 1)}
    colours, areas = {}, {}
    for name in MOTION_CLASSES:
        for seed in range(4):
            frames = render_video(name, seed, num_frames=32)
            mask = object_mask(frames)
            colours[name, seed] = frames[mask].astype(float).mean(axis=0)
            areas[name, seed] = mask.sum() / len(mask)
            if name in expected:
                velocity = np.diff(centroids(frames), axis=0).mean(axis=0)
                direction = np.sign(velocity) * (np.abs(velocity) > 0.5 * np.abs(velocity).max())
                assert tuple(direction) == expected[name], (name, seed, velocity)
    reference = np.array([255.0, 140.0, 0.0])
    for colour in colours.values():
        np.testing.assert_allclose(colour, reference, atol=12)
    for seed in range(4):
        seed_areas = [areas[name, seed] for name in MOTION_CLASSES]
        assert max(seed_areas) < 1.08 * min(seed_areas)


def test_appearance_classes_share_motion_and_differ_in_shape() -> None:
    for seed in range(3):
        disk, triangle = (render_video(name, seed, num_frames=24) for name in ("Disk", "Triangle"))
        np.testing.assert_allclose(centroids(disk), centroids(triangle), atol=1.5)
        disk_mask, triangle_mask = object_mask(disk), object_mask(triangle)
        assert abs(disk_mask.sum() / triangle_mask.sum() - 1) < 0.1
        overlap = (disk_mask & triangle_mask).sum() / (disk_mask | triangle_mask).sum()
        assert overlap < 0.85


def estimated_period(frames: np.ndarray) -> float:
    """Period of the vertical centroid track: the strongest peak of its zero-padded spectrum."""
    track = centroids(frames)[:, 1]
    track = track - np.polyval(np.polyfit(np.arange(len(track)), track, 1), np.arange(len(track)))
    padded = 8192
    spectrum = np.abs(np.fft.rfft(track * np.hanning(len(track)), n=padded))
    freqs = np.fft.rfftfreq(padded)
    spectrum[freqs < 1 / 40] = 0
    return 1.0 / freqs[spectrum.argmax()]


def test_rhythm_periods_are_ordered_and_vary_within_a_class() -> None:
    periods = {
        name: [estimated_period(render_video(name, seed, num_frames=80)) for seed in range(4)]
        for name in FAMILIES["rhythm"]
    }
    slow, medium, fast = (periods[name] for name in ("BounceSlow", "BounceMedium", "BounceFast"))
    assert min(slow) > max(medium) and min(medium) > max(fast)
    assert 4 < min(fast) and max(slow) < 32
    for values in periods.values():
        assert np.std(values) / np.mean(values) > 0.02
