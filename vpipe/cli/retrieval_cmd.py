"""``vpipe index`` and ``vpipe search``: retrieval over the feature cache."""

from __future__ import annotations

import math
from pathlib import Path
from functools import partial
from typing import Annotated, Any

import typer

from vpipe.cli.dataset_command import CommandContext, dataset_command
from vpipe.cli.options import Device, option_group
from vpipe.retrieval.index_options import IndexOptions

Embedding = Annotated[
    str,
    typer.Option(
        "--embedding", "-e",
        help="What to index: encodings:<features>-k<K>-<method>, features:<set>[:<layer>] or run:<run_id>.",
    ),
]  # fmt: skip
Name = Annotated[
    str | None, typer.Option("--name", help="Index name; left out, one derived from the embedding (li3d-rgb-k128-vlad).")
]
Centre = Annotated[
    bool,
    typer.Option("--centre/--no-centre", help="Subtract the gallery mean from every vector and query (default)."),
]
Whiten = Annotated[
    bool, typer.Option("--whiten", help="Also PCA-whiten vectors and queries on the gallery's principal axes.")
]
Exact = Annotated[bool, typer.Option("--exact", help="Always build an exact (flat) index, whatever the size.")]
Clips = Annotated[
    bool, typer.Option("--clips", help="One vector per clip (features: embeddings) / clip hits with time spans.")
]
IndexName = Annotated[str, typer.Option("--index", "-i", help="Index name under index/, as `vpipe index` printed it.")]
VideoId = Annotated[str | None, typer.Option("--id", help="Query with this dataset video (its manifest video_id).")]
VideoFile = Annotated[
    Path | None, typer.Option("--video", help="Query with a new video file, embedded like the indexed ones.")
]
TopK = Annotated[int, typer.Option("--k", "-k", min=1, help="How many neighbours to return.")]
GallerySplit = Annotated[
    str | None, typer.Option("--split", help="Return only gallery videos of this split, e.g. train.")
]
Evaluate = Annotated[
    bool, typer.Option("--evaluate", help="Test videos query the train gallery: Recall@1/5/10/20/50 and mAP by label.")
]
Expect = Annotated[
    str | None, typer.Option("--embedding", "-e", help="Refuse the index unless it was built from this embedding.")
]

index_options = option_group(
    "options", IndexOptions, {"name": Name, "exact": Exact, "clips": Clips, "centre": Centre, "whiten": Whiten}
)


@dataset_command
@index_options
def index(embedding: Embedding, options: IndexOptions, device: Device = "auto", *, context: CommandContext) -> None:
    """Build a cosine-similarity FAISS index over an embedding of every usable video.

    Flat (exact) below 50k vectors or with --exact, IVF above; the choice, its parameters
    and the measured recall are recorded. Vectors are centred on the gallery mean (and
    PCA-whitened with --whiten); queries get the same transform. A rerun with an
    unchanged embedding does nothing.

    Example: vpipe index --dataset ucf101 --embedding encodings:li3d-rgb-k128-vlad
    """
    from vpipe.retrieval import build_index

    context.show(build_index(context.workspace, embedding, options, device=device), _print_index)


def _print_index(summary: dict[str, Any]) -> None:
    state = "written" if summary["written"] else "up to date"
    params = ", ".join(f"{k}={v}" for k, v in summary["params"].items())
    typer.echo(
        f"index {summary['name']} ({state}): {summary['count']} {summary['level']} vectors x {summary['dim']} "
        f"from {summary['embedding']}, {summary['kind']}{f' ({params})' if params else ''}, "
        f"expected recall@10 {summary['expected_recall_at_10']:.3f} -> {summary['path']}"
    )
    spread = summary.get("score_spread", {})
    if spread.get("indexed"):
        transform = "whitened" if summary["whitened"] else "centred" if summary["centred"] else "raw"
        typer.echo(
            f"scores between gallery videos, 1st-99th percentile: raw {_range(spread['raw'])}, "
            f"{transform} {_range(spread['indexed'])}"
        )


def _range(spread: dict[str, float]) -> str:
    return f"{spread['p1']:.4f} to {spread['p99']:.4f}"


def _span(hit: dict[str, Any]) -> str:
    if hit["start_s"] is None or math.isnan(hit["start_s"]):
        return ""
    return f"{hit['start_s']:.2f}-{hit['end_s']:.2f}s"


def _print_hits(hits: list[dict[str, Any]], *, clips: bool) -> None:
    if not hits:
        typer.echo("no hits")
        return
    width = max(len(h["label_name"]) for h in hits)
    for hit in hits:
        clip = f"  clip {hit['clip']} {_span(hit)}" if clips else ""
        typer.echo(
            f"{hit['rank']:>3}  {hit['score']:7.4f}  {hit['label_name']:<{width}}  {hit['split']:<5}  "
            f"{hit['video_id']}{clip}  {hit['path']}"
        )


def _print_evaluation(result: dict[str, Any]) -> None:
    recalls = [key for key in result if key.startswith("R@")]
    typer.echo(f"{result['index']}: {result['queries']} test queries against {result['gallery_videos']} train videos")
    typer.echo("  ".join(f"{key} {result[key]:.3f}" for key in recalls) + f"  mAP {result['mAP'] or 0:.3f}")
    typer.echo(f"per label -> {result['path']}")


@dataset_command
def search(
    index_name: IndexName,
    video_id: VideoId = None,
    video: VideoFile = None,
    evaluate: Evaluate = False,
    k: TopK = 10,
    split: GallerySplit = None,
    clips: Clips = False,
    embedding: Expect = None,
    device: Device = "auto",
    *,
    context: CommandContext,
) -> None:
    """Find the videos nearest to a dataset video (--id) or a new video file (--video), or evaluate.

    --video runs probe, plan, flow and extraction on the file in a scratch directory with
    the configuration recorded in the index; the dataset's artifacts are not touched.

    Example: vpipe search --dataset ucf101 --index li3d-rgb-k128-vlad --id ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01 -k 5
    """
    from vpipe.retrieval import Index, evaluate_index

    if sum([video_id is not None, video is not None, evaluate]) != 1:
        raise typer.BadParameter("give exactly one of --id VIDEO_ID, --video FILE or --evaluate")
    opened = Index.open(context.workspace, name=index_name, embedding=embedding)
    if evaluate:
        context.show(evaluate_index(opened, device=device), _print_evaluation)
        return
    if video is not None:
        hits = opened.search_video(video, k, split=split, clips=clips, device=device)
    else:
        hits = opened.search(video_id, k, split=split, clips=clips, device=device)
    context.show([hit.as_dict() for hit in hits], partial(_print_hits, clips=clips))


Output = Annotated[Path, typer.Option("--output", help="The Parquet file to write, e.g. ucf101-vlad.parquet.")]
ExportClips = Annotated[bool, typer.Option("--clips", help="One row per clip (features: embeddings), with its time span.")]


@dataset_command
def export(
    embedding: Embedding,
    output: Output,
    clips: ExportClips = False,
    device: Device = "auto",
    *,
    context: CommandContext,
) -> None:
    """Write an embedding of every usable video (or clip) to Parquet, for a vector database.

    Columns: video_id, clip, label, label_name, split, path, start_s, end_s and vector
    (unit-length float32, a fixed-size list); provenance in the schema metadata "vpipe".
    Written a batch at a time: memory stays bounded at any gallery size.

    Example: vpipe export --dataset ucf101 --embedding encodings:li3d-rgb-k128-vlad --output ucf101-vlad.parquet
    """
    from vpipe.retrieval.export import export_embedding

    summary = export_embedding(context.workspace, embedding, output, clips=clips, device=device)
    context.show(summary, _print_export)


def _print_export(summary: dict[str, Any]) -> None:
    typer.echo(
        f"{summary['rows']} {summary['level']} vectors x {summary['dim']} of {summary['embedding']} "
        f"in {summary['seconds']:.1f} s -> {summary['path']}"
    )


def register(app: typer.Typer) -> None:
    app.command("index")(index)
    app.command("search")(search)
    app.command("export")(export)
