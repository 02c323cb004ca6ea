"""Temporal sampling: which frames of a video a clip is made of.

Every function here is pure: it maps a frame count (and, for the random samplers, a
``numpy.random.Generator``) to 0-based frame indices as ``int64`` arrays. Decoding,
cropping and feature extraction all read these indices, so the rules below are the
single place where each paper's sampling protocol is written down:

- :func:`li3d_indices` / :func:`li3d_clips` — Algorithm 1 of li3d-bilstm §3.1.1;
- :func:`uniform_indices` — eq. 13–14 of two-stream-deep-fusion-ln-lstm;
- :func:`tsn_indices` — n segments × k frames (vcm-sdd-detail-attention-fusion §3, §4);
- :func:`dense_windows` — the ST-MANet test protocol (§4.1);
- :func:`strided_clips` — the multi-clip test protocol of the video transformers
  (VideoMAE's and V-JEPA's ``frames × rate × clips``);
- :func:`flow_stack_indices` — flow stacks of L fields centred on sampled frames
  (two-stream-deep-fusion-ln-lstm §3.5–3.6).
"""

from __future__ import annotations

import numpy as np

from vpipe.errors import ConfigError


def _require_positive(**values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}; pass an int >= 1")


def li3d_indices(num_frames: int, need: int, rng: np.random.Generator) -> np.ndarray:
    """Algorithm 1 of li3d-bilstm: ``need`` frames from a video of ``num_frames``.

    The algorithm branches on ``Flag = Total // Need``:

    - ``Flag == 0`` (a video shorter than ``need``): the whole video is traversed
      ``Times = need // num_frames`` times, then its first ``Left = need % num_frames``
      frames are appended, so short, fast actions still fill the clip in order;
    - otherwise a window of ``need`` consecutive frames starts at
      ``begin = Random(0, num_frames - need)``, both ends included (Python's
      ``random.randint``), so long, periodic actions are seen at their own pace.

    A video of exactly ``need`` frames takes the window branch with ``begin = 0``; the
    paper's prose ("does not exceed") puts it in the loop branch, which gives the same
    frames. The window branch always draws from ``rng``.
    """
    _require_positive(num_frames=num_frames, need=need)
    if num_frames < need:
        times, left = divmod(need, num_frames)
        whole = np.arange(num_frames, dtype=np.int64)
        return np.concatenate([np.tile(whole, times), whole[:left]])
    begin = int(rng.integers(0, num_frames - need, endpoint=True))
    return np.arange(begin, begin + need, dtype=np.int64)


def li3d_clips(num_frames: int, need: int, clips: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``clips`` clips of ``need`` frames for the li3d sampler.

    One clip is exactly Algorithm 1 (:func:`li3d_indices`). The paper extracts a single
    clip per video; for a feature cache that should describe a long video as a whole,
    ``clips > 1`` windows of ``need`` consecutive frames are spaced evenly from the first
    frame to the last: ``begin_c = c * (num_frames - need) // (clips - 1)``, so the first
    window starts at frame 0 and the last one ends on the final frame. A video shorter
    than ``need`` has only one possible clip (the looped one), which every clip repeats,
    so each video yields the same number of clips.
    """
    _require_positive(num_frames=num_frames, need=need, clips=clips)
    if clips == 1:
        return [li3d_indices(num_frames, need, rng)]
    if num_frames < need:
        looped = li3d_indices(num_frames, need, rng)
        return [looped.copy() for _ in range(clips)]
    span = num_frames - need
    return [np.arange(b, b + need, dtype=np.int64) for b in (c * span // (clips - 1) for c in range(clips))]


def uniform_indices(num_frames: int, count: int) -> np.ndarray:
    """``count`` frames at a fixed interval (eq. 13–14 of two-stream-deep-fusion-ln-lstm).

    Eq. 13 sets the interval ``t = N / T`` and eq. 14 takes the 1-based frames
    ``S = (1·t', 2·t', …, T·t')`` with ``t' = floor(t)``; in 0-based indices that is
    ``k·t' − 1`` for ``k = 1..T``, so the last frame taken is never past the end.

    The paper picks ``T`` as the shortest video of the dataset, so ``N < T`` never
    happens there; here ``t' = 0`` would collapse every index onto one frame. Instead a
    short video is stretched: ``ceil(k·N / T) − 1`` for ``k = 1..T`` repeats each frame
    ``T/N`` times (rounded) in order and still ends on the last frame, keeping the
    temporal order the LSTM heads rely on.
    """
    _require_positive(num_frames=num_frames, count=count)
    k = np.arange(1, count + 1, dtype=np.int64)
    if num_frames >= count:
        return k * (num_frames // count) - 1
    return (k * num_frames + count - 1) // count - 1


#: How a segment's ``k`` frames are placed: spread over the segment (vcm-sdd §4.1) or
#: one snippet of consecutive frames (TSN's snippet, the earlier default).
TSN_SPACINGS = ("even", "consecutive")


def tsn_indices(
    num_frames: int,
    segments: int,
    frames_per_segment: int,
    rng: np.random.Generator | None,
    spacing: str = "even",
) -> np.ndarray:
    """TSN-style sampling: ``segments`` equal segments, ``frames_per_segment`` frames each.

    vcm-sdd (§3.1, §4.1) decomposes a video into ``n`` segments along the time axis and
    "evenly extracts" ``k`` frames per segment (8 or 16 segments × 6 frames). Segment
    ``i`` covers frames ``[s_i, s_i + len_i)`` with ``s_i = i·N // n``.

    ``spacing="even"`` (the paper's reading, and what gives eq. 6's Δt/T its meaning: the
    frames of a segment span the whole segment) splits the segment into ``k`` equal parts
    and takes one frame from each: frame ``j`` is ``s_i + ⌊(j + u)·len_i / k⌋`` with
    ``u = ½`` in test mode (the middle of each part) and ``u`` drawn uniformly from
    [0, 1) per frame in training, as TSN draws its snippets. A segment shorter than
    ``k`` repeats frames instead of reaching into the next one.

    ``spacing="consecutive"``: a snippet of ``k`` consecutive frames starting at
    ``s_i + (len_i − k) // 2`` (test) or at a uniformly random position where it fits
    (training); when a segment is shorter than ``k`` the snippet starts at the segment's
    first frame and runs on into the next segment, indices past the last frame clipped.

    A video with fewer frames than segments therefore repeats frames rather than failing.
    Result: ``n·k`` indices, segment-major.
    """
    _require_positive(num_frames=num_frames, segments=segments, frames_per_segment=frames_per_segment)
    if spacing not in TSN_SPACINGS:
        raise ValueError(f"spacing must be one of {', '.join(TSN_SPACINGS)}, got {spacing!r}")
    bounds = np.arange(segments + 1, dtype=np.int64) * num_frames // segments
    starts, lengths = bounds[:-1], np.diff(bounds)
    k = frames_per_segment
    if spacing == "even":
        parts = np.arange(k, dtype=np.float64)[None, :]
        offset = np.full((segments, k), 0.5) if rng is None else rng.random((segments, k))
        inside = np.floor((parts + offset) * lengths[:, None] / k).astype(np.int64)
        inside = np.minimum(inside, np.maximum(lengths[:, None] - 1, 0))
        return np.minimum(starts[:, None] + inside, num_frames - 1).reshape(-1)
    slack = np.maximum(lengths - k, 0)
    if rng is None:
        offsets = slack // 2
    else:
        offsets = rng.integers(0, slack, endpoint=True)
    first = starts + offsets
    indices = first[:, None] + np.arange(k, dtype=np.int64)
    return np.minimum(indices, num_frames - 1).reshape(-1)


def dense_windows(num_frames: int, length: int, stride: int, step: int = 1) -> list[np.ndarray]:
    """Sliding windows over the whole video (ST-MANet test protocol, §4.1).

    ST-MANet divides the entire test video into windows of ``length`` = 64 consecutive
    frames and subsamples each with ``step`` = 2, giving 32-frame clips. Windows start
    at ``0, stride, 2·stride, …`` while they fit; so that "the entire video" is covered,
    a last window ending on the final frame is added when the regular ones stop short
    of it. A video shorter than one window gives a single window looped from its first
    frame (as Algorithm 1 of li3d-bilstm loops short videos): ``arange(length) % N``.
    Each window is then subsampled as ``window[::step]``.
    """
    _require_positive(num_frames=num_frames, length=length, stride=stride, step=step)
    if num_frames < length:
        return [(np.arange(length, dtype=np.int64) % num_frames)[::step]]
    starts = list(range(0, num_frames - length + 1, stride))
    if starts[-1] + length < num_frames:
        starts.append(num_frames - length)
    return [np.arange(s, s + length, step, dtype=np.int64) for s in starts]


def strided_clips(num_frames: int, frames: int, step: int, clips: int) -> list[np.ndarray]:
    """``clips`` clips of ``frames`` frames taken every ``step`` frames, spread over the video.

    The evaluation protocol of the video transformers: VideoMAE tests Kinetics with
    16 frames at sampling rate 4 in 5 clips (its ``--num_frames 16 --sampling_rate 4
    --test_num_segment 5``), V-JEPA with 16 frames at frame step 4 in 8 (its ``16x8x3``
    configs). The rule is VideoMAE's test loader: the video is read on the grid
    ``0, step, 2·step, …`` (G frames, the last grid frame repeated until there are
    ``frames``), and clip ``c`` is the ``frames`` consecutive grid frames from grid
    position ``int(c · ((G − frames) / (clips − 1)))``, in the reference's floating-point
    arithmetic so that the indices are its own (an exact rational would move some starts
    by one, e.g. clip 7 of 8 at G = 246), so the first clip starts on frame 0, the
    last ends on the last grid frame, and a video shorter than one clip keeps its step
    and repeats its last grid frame (every clip is then the same). VideoMAE has no
    single-clip test; here one clip is centred, from ``(G − frames) // 2``.

    V-JEPA instead starts each clip at the beginning of one of ``clips`` equal segments,
    with frames ``linspace``-spaced (4.27 apart for 16 in 64); the grid rule is used for
    both, since it is the paper's stated stride and covers the video's end.
    """
    _require_positive(num_frames=num_frames, frames=frames, step=step, clips=clips)
    grid = np.arange(0, num_frames, step, dtype=np.int64)
    if grid.size < frames:
        grid = np.concatenate([grid, np.full(frames - grid.size, grid[-1], dtype=np.int64)])
    slack = grid.size - frames
    starts = [slack // 2] if clips == 1 else [int(c * (slack / (clips - 1))) for c in range(clips)]
    return [grid[start : start + frames].copy() for start in starts]


def flow_stack_indices(center_indices: np.ndarray, num_frames: int, L: int = 4) -> np.ndarray:
    """Frames whose consecutive pairs give ``L`` flow fields around each sampled frame.

    two-stream-deep-fusion-ln-lstm §3.5–3.6 collects the optical flow "centred on the
    captured video image frame" within ``L/2`` of it, ``L = 4`` flow images per sampled
    frame. Row ``i`` of the result holds ``L + 1`` frame indices ``f_0 … f_L``; flow
    field ``j`` is computed from ``(f_j, f_{j+1})``. For a sampled frame ``c`` the row
    is ``c − L//2, …, c − L//2 + L`` — for ``L = 4``: ``c−2 … c+2``, two fields before
    ``c`` and two after.

    Near the video ends the whole row is shifted (not each index clamped) to stay
    inside ``[0, num_frames − 1]``, so every stack still holds ``L`` real motion fields
    instead of zero flow from a repeated frame; ``c`` is then off-centre. Only a video
    with ``num_frames <= L`` cannot hold a stack, and its indices are clipped to the
    last frame (the trailing fields are zero motion). Shape: ``(len(centers), L + 1)``.
    """
    _require_positive(num_frames=num_frames, L=L)
    centers = np.asarray(center_indices, dtype=np.int64).reshape(-1)
    if centers.size and (centers.min() < 0 or centers.max() >= num_frames):
        raise ConfigError(
            f"center_indices must lie in [0, {num_frames - 1}] for a video of {num_frames} frames, "
            f"got values in [{centers.min()}, {centers.max()}]; sample them from the same video"
        )
    first = np.clip(centers - L // 2, 0, max(num_frames - 1 - L, 0))
    return np.minimum(first[:, None] + np.arange(L + 1, dtype=np.int64), num_frames - 1)
