"""Retrieval examples for ``report.html``: frame strips of a few test queries and their hits.

For each evaluated index (``index/*-evaluation.json``) the first :data:`EXAMPLE_QUERIES`
test videos (by id, so the page is the same on every build) query the train gallery; the
query and each of its top :data:`EXAMPLE_HITS` hits are shown as a strip of
:data:`STRIP_FRAMES` frames spread evenly over the video, with rank, score, label and id.
A reader sees at a glance whether the hits *look* like the query, which no R@K says.

Thumbnails are decoded from the videos' recorded paths and embedded as PNG data URIs
(the page stays one file). A video that no longer decodes gets a caption saying so
instead of a strip; the rest of the page is still written.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from vpipe.errors import VpipeError
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.video.decode import read_frames

EXAMPLE_QUERIES = 3
EXAMPLE_HITS = 5
STRIP_FRAMES = 4
#: Thumbnail height in pixels: six strips of four side by side fit a laptop screen.
THUMB_HEIGHT = 64


def frame_strip(path: str | Path, num_frames: int, frames: int = STRIP_FRAMES, height: int = THUMB_HEIGHT) -> bytes:
    """PNG bytes of ``frames`` frames spread evenly over the video, scaled to ``height`` and side by side.

    Frames are taken at the centres of ``frames`` equal spans, so a short video still
    shows its beginning, middle and end rather than its first frames.
    """
    if num_frames < 1:
        raise ValueError(f"{path} has no frames")
    indices = np.unique(((np.arange(frames) + 0.5) * num_frames / frames).astype(np.int64).clip(0, num_frames - 1))
    decoded = read_frames(path, indices.tolist())
    width = max(1, round(decoded.shape[2] * height / decoded.shape[1]))
    strip = Image.new("RGB", (width * len(decoded), height))
    for i, frame in enumerate(decoded):
        strip.paste(Image.fromarray(frame).resize((width, height), Image.BILINEAR), (i * width, 0))
    buffer = io.BytesIO()
    strip.save(buffer, format="PNG")
    return buffer.getvalue()


def _figure(path: str, num_frames: int, caption: str) -> str:
    try:
        png = frame_strip(path, num_frames)
    except (VpipeError, OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f'<figure class="strip"><figcaption>{html.escape(caption)}<br>frames unavailable: {html.escape(reason)}</figcaption></figure>'
    src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return f'<figure class="strip"><img src="{src}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def retrieval_examples_html(
    ws: DatasetWorkspace, index_names: Sequence[str], *, queries: int = EXAMPLE_QUERIES, k: int = EXAMPLE_HITS,
    device: str = "auto",
) -> str:  # fmt: skip
    """The examples section for ``index_names`` (empty text when there is nothing to show)."""
    from vpipe.retrieval.index import Index

    manifest = ws.read_manifest().set_index("video_id")
    frames = manifest["num_frames"].to_dict() if "num_frames" in manifest else {}
    parts: list[str] = []
    for name in index_names:
        try:
            index = Index.open(ws, name=name)
        except VpipeError as exc:
            parts.append(f"<h3>{html.escape(name)}</h3><p>No examples: {html.escape(str(exc))}</p>")
            continue
        videos = index.rows.drop_duplicates("video_id")
        test = videos[videos["split"] == "test"].sort_values("video_id").head(queries)
        if test.empty or not (videos["split"] == "train").any():
            continue
        parts.append(f"<h3>{html.escape(name)}</h3>")
        for query in test.itertuples():
            try:
                hits = index.search(str(query.video_id), k, split="train", device=device)
            except VpipeError as exc:
                parts.append(f"<p>No examples: {html.escape(str(exc))}</p>")
                break
            row = [_figure(str(query.path), int(frames.get(query.video_id, 0)), f"query · {query.label_name} · {query.video_id}")]
            row += [
                _figure(hit.path, int(frames.get(hit.video_id, 0)),
                        f"#{hit.rank} · {hit.score:.3f} · {hit.label_name}{' ✓' if hit.label == query.label else ''} · {hit.video_id}")
                for hit in hits
            ]  # fmt: skip
            parts.append('<div class="strips">' + "".join(row) + "</div>")
    if not parts:
        return ""
    return (
        "<h2>Retrieval examples</h2><p>The first test videos by id query the train videos; each strip shows "
        f"{STRIP_FRAMES} frames spread over the video. Hits read rank · cosine score · label (✓ same as the "
        "query) · video.</p>" + "\n".join(parts)
    )
