"""``vpipe encode``: codebook, classic encodings and their linear baseline."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape

from vpipe import catalog

from vpipe.cli.dataset_command import CommandContext, dataset_command
from vpipe.cli.options import Device, Features, Seed, err
from vpipe.errors import ConfigError

Clusters = Annotated[int, typer.Option("--clusters", "-k", min=1, help="Codebook size K (the paper uses 128).")]
SampleSize = Annotated[
    int | None,
    typer.Option(
        "--sample-size", min=1, help="Train descriptors k-means is fitted on.", show_default="min(all, 100000)"
    ),
]
Niter = Annotated[int, typer.Option("--niter", min=1, help="k-means iterations.")]
Methods = Annotated[str, typer.Option("--methods", help="Comma-separated encodings: bof, vlad, fv.")]
Layer = Annotated[str, typer.Option("--layer", help="Cached layer holding per-step descriptors.")]
SvmC = Annotated[
    float | None,
    typer.Option(
        "--svm-c", min=0.0, help="Fixed C of the linear SVM.", show_default="chosen on train data only"
    ),
]
Pca = Annotated[
    str,
    typer.Option(
        "--pca",
        help="Descriptor dimension after a train-only PCA, fitted with the codebook: auto = D/2 "
        "(as in the improved-trajectory Fisher-vector papers) when the codebook sample holds at least "
        "10 descriptors per dimension, else none; 0 = no PCA, or a number.",
    ),
]
Whiten = Annotated[bool, typer.Option("--whiten", help="Whiten the PCA components (divide by their deviation).")]
MemoryBudget = Annotated[
    str,
    typer.Option(
        "--memory-budget",
        help="Most memory the k-means sample and the baseline's train matrix may take, e.g. 3G or 512M.",
    ),
]

Baseline = Annotated[
    bool, typer.Option("--baseline/--no-baseline", help="Fit and report the linear baseline on the encodings.")
]

_DEVICES = {"auto": None, "cpu": False, "cuda": True}


def _pca(value: str) -> int | str | None:
    if value == "auto":
        return value
    try:
        return int(value) or None
    except ValueError:
        raise ConfigError(f"--pca expects auto, 0 or a dimension, got {value!r}") from None


def _print_summary(summary: dict[str, Any]) -> None:
    book = summary["codebook"]
    typer.echo(
        f"codebook {book['path']}: {'fitted' if book['fitted'] else 'up to date'}, K={summary['clusters']}, "
        f"{book['sample_size']} descriptors of {book['train_videos']} train videos "
        f"({book['descriptors_per_centroid']} per centroid), objective {book['objective']:.6g} ({book['device']})"
        + (f", PCA to {book['pca']['dim']}" if book.get("pca") else "")
    )
    for method, entry in summary["encodings"].items():
        state = "written" if entry["written"] else "up to date"
        typer.echo(f"{method}: {summary['videos']} videos x {entry['dim']} -> {entry['path']} ({state})")
    if summary["videos_without_features"]:
        typer.echo(f"{summary['videos_without_features']} manifest video(s) have no features and were not encoded")
    baseline = summary["baseline"]
    if baseline is None:
        typer.echo("baseline skipped: --no-baseline, or the dataset has no test videos")
        return
    typer.echo(f"\nlinear baseline (test split), {baseline['path']}:")
    typer.echo(f"{'method':<8}{'dim':>9}{'C':>8}{'accuracy':>10}{'precision':>11}{'recall':>8}{'top-5':>8}")
    for method, m in baseline["methods"].items():
        typer.echo(
            f"{method:<8}{m['dim']:>9}{m['C']:>8g}{m['accuracy']:>10.3f}"
            f"{m['macro_precision']:>11.3f}{m['macro_recall']:>8.3f}{m['top5']:>8.3f}"
        )


@dataset_command
def encode(
    features: Features = "li3d-rgb",
    clusters: Clusters = 128,
    sample_size: SampleSize = None,
    seed: Seed = 0,
    niter: Niter = 20,
    methods: Methods = ",".join(catalog.ENCODE_METHODS),
    layer: Layer = "pool",
    svm_c: SvmC = None,
    pca: Pca = catalog.DEFAULT_PCA,
    whiten: Whiten = False,
    memory_budget: MemoryBudget = catalog.ENCODE_MEMORY_BUDGET,
    baseline: Baseline = True,
    device: Device = "auto",
    *,
    context: CommandContext,
) -> None:
    """Fit a train-only k-means codebook and encode every video as BoF, VLAD and Fisher vectors.

    Writes codebooks/<features>-k<K>.h5, encodings/<features>-k<K>-<method>.h5 and a linear
    baseline's test metrics; a rerun with the same inputs and options does nothing.

    Needs faiss (`pip install 'vpipe[cpu]'` or `'vpipe[gpu]'`).

    Example: vpipe encode --dataset ucf101 --features li3d-rgb --clusters 128
    """
    from vpipe.encode.budget import parse_bytes
    from vpipe.encode.kmeans import MissingFaissError, import_faiss
    from vpipe.stages.encode import EncodeOptions, run_encode

    try:
        import_faiss()
    except MissingFaissError as error:
        err.print(f"[red]error:[/] {escape(str(error))}")
        raise typer.Exit(2) from None
    if device not in _DEVICES:
        raise ConfigError(f"--device must be auto, cpu or cuda, got {device!r}")
    options = EncodeOptions(
        sample_size=sample_size,
        seed=seed,
        niter=niter,
        methods=[m.strip() for m in methods.split(",") if m.strip()],
        layer=layer,
        svm_c=svm_c,
        use_gpu=_DEVICES[device],
        pca=_pca(pca),
        whiten=whiten,
        memory_budget=parse_bytes(memory_budget),
        baseline=baseline,
    )
    summary = run_encode(context.workspace, features, clusters, options)
    context.show(summary, _print_summary)


def register(app: typer.Typer) -> None:
    app.command("encode")(encode)
