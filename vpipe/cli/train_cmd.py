"""``vpipe heads``, ``train``, ``evaluate`` and ``report``: heads on the feature cache."""

from __future__ import annotations

from dataclasses import fields
from functools import partial
from typing import Annotated, Any, Optional

import typer

from vpipe import catalog

from vpipe.cli.dataset_command import CommandContext, dataset_command
from vpipe.cli.options import Device, Json, Seed, err, option_group, parse_key_values, show
from vpipe.train.config import DEFAULT_MEMORY_BUDGET_TEXT, FUSIONS, SCHEDULES, TrainConfig

# The dataclass's defaults, read without building one (that would import the heads, and
# torch with them, before ``--help`` prints).
_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}

Features = Annotated[
    Optional[list[str]],
    typer.Option(
        "--features",
        "-f",
        help="Feature set under features/, repeatable (rgb then flow for two-stream heads).",
        show_default="li3d-rgb",
    ),
]
Head = Annotated[str, typer.Option("--head", help=f"Registered head: {', '.join(catalog.HEADS)} (see `vpipe heads`).")]
HeadOptions = Annotated[
    Optional[list[str]],
    typer.Option("--head-option", "-O", help="Head option KEY=VALUE, repeatable (see `vpipe heads` for each head's)."),
]
Fusion = Annotated[
    str,
    typer.Option(
        "--fusion",
        help=f"How a one-stream head reads several feature sets: {' or '.join(FUSIONS)} "
        "(late: one head per set, class probabilities averaged; early: inputs concatenated).",
    ),
]
ValFraction = Annotated[
    float, typer.Option("--val-fraction", help="Share of each class's train videos held out for validation.")
]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Videos per batch.")]
Epochs = Annotated[
    Optional[int], typer.Option("--epochs", min=1, help="Maximum epochs.", show_default="the head's (vpipe heads)")
]
Patience = Annotated[
    int, typer.Option("--patience", min=1, help="Stop after this many epochs without a better validation accuracy.")
]
Lr = Annotated[
    Optional[float], typer.Option("--lr", help="Peak AdamW learning rate.", show_default="the head's (vpipe heads)")
]
WeightDecay = Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay.")]
Warmup = Annotated[float, typer.Option("--warmup-epochs", help="Epochs of linear learning-rate warm-up.")]
Schedule = Annotated[
    Optional[str],
    typer.Option(
        "--schedule",
        help=f"Learning-rate schedule: {' or '.join(SCHEDULES)} (two-phase: --lr for the first half of the "
        "epochs, then --lr/10 from the best checkpoint).",
        show_default="the head's (vpipe heads)",
    ),
]
Amp = Annotated[bool, typer.Option("--amp/--no-amp", help="bf16/fp16 autocast on CUDA (ignored on CPU).")]
RunId = Annotated[
    Optional[str],
    typer.Option("--run-id", help="Name of the run.", show_default="<features>-<head settings>-s<seed>"),
]
Threads = Annotated[
    Optional[int],
    typer.Option("--threads", min=1, help="torch CPU threads; 1 suits small heads on busy cores.", show_default="torch's"),
]

MemoryBudget = Annotated[
    str,
    typer.Option(
        "--memory-budget",
        help="Most memory the training process may take, e.g. 6G or 3.5G; sets how many videos of a batch "
        "run at once (gradients accumulate, one optimiser step per batch).",
    ),
]
MicroBatch = Annotated[
    Optional[int],
    typer.Option("--micro-batch", min=1, help="Videos run at once, instead of the budget's choice.", show_default="the budget's"),
]


def _print_metrics(metrics: dict[str, Any]) -> None:
    typer.echo(
        f"test ({metrics['videos']} videos): accuracy {metrics['accuracy']:.3f}, "
        f"macro precision {metrics['macro_precision']:.3f}, macro recall {metrics['macro_recall']:.3f}, "
        f"top-5 {metrics['top5']:.3f}; {metrics['parameters']:,} parameters, "
        f"{metrics['test_ms_per_video']:.2f} ms per video"
    )


def heads(json_output: Json = False) -> None:
    """List every registered head: its inputs, options with defaults, training defaults, hooks and size.

    Parameters are counted at each head's example input size (the paper's) for 101 classes.

    Example: vpipe heads --json
    """
    show(catalog.describe_heads(), _print_heads, json_output=json_output)


def _print_heads(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        size = "?" if row["parameters"] is None else f"{row['parameters'] / 1e6:.2f}M"
        shapes = ", ".join(f"{role} {tuple(shape)}" for role, shape in row["example_shapes"].items())
        typer.echo(f"{row['name']} v{row['version']}  ({size} parameters at {shapes or 'no example input'})")
        typer.echo(f"  {row['summary']}")
        for spec in row["inputs"]:
            typer.echo(f"  input {spec['role']}: layer {spec['layer']} of {' + '.join(spec['features'])} ({spec['layout']})")
        for option in row["options"]:
            choices = f" [{'|'.join(map(str, option['choices']))}]" if option["choices"] else ""
            typer.echo(f"  -O {option['name']}={option['default']}{choices}  {option['help']}")
        training = row["training"]
        typer.echo(
            f"  training: --lr {training['lr']:g} --epochs {training['max_epochs']} --schedule {training['schedule']}"
            f"  ({training['reason']})"
        )
        if row["hooks"]:
            typer.echo(f"  hooks: {', '.join(row['hooks'])}")


def _train_config(
    features: list[str] | None, head_option: list[str] | None, epochs: int | None, **same: Any
) -> TrainConfig:
    """The config the training options describe; the options not named here are the
    config's fields of the same name."""
    return TrainConfig(
        features=tuple(features or _DEFAULTS["features"]),
        head_options=parse_key_values(head_option, "--head-option"),
        max_epochs=epochs,
        **same,
    )


_CONFIG_OPTIONS = {
    "features": Features, "head": Head, "head_option": HeadOptions, "fusion": Fusion, "val_fraction": ValFraction,
    "batch_size": BatchSize, "epochs": Epochs, "patience": Patience, "lr": Lr, "weight_decay": WeightDecay,
    "warmup_epochs": Warmup, "schedule": Schedule, "seed": Seed, "device": Device, "amp": Amp,
}  # fmt: skip
#: An option named as a config field defaults to the field's default; ``--features``
#: shows its default in words, and the others map onto fields of other names.
_CONFIG_DEFAULTS = {name: _DEFAULTS[name] for name in (_CONFIG_OPTIONS.keys() & _DEFAULTS.keys()) - {"features"}}
train_config = option_group("config", _train_config, _CONFIG_OPTIONS, _CONFIG_DEFAULTS)


def _print_training(summary: dict[str, Any]) -> None:
    typer.echo(f"run {summary['run_id']}: {summary['directory']}")
    typer.echo(
        f"{summary['epochs']} epochs{' (stopped early)' if summary['stopped_early'] else ''}; "
        f"kept epoch {summary['best_epoch']} with validation accuracy {summary['best_val_acc']:.3f}"
    )
    _print_metrics(summary["metrics"])


@dataset_command
@train_config
def train(
    *,
    config: TrainConfig,
    run_id: RunId = None,
    threads: Threads = None,
    memory_budget: MemoryBudget = DEFAULT_MEMORY_BUDGET_TEXT,
    micro_batch: MicroBatch = None,
    context: CommandContext,
) -> None:
    """Train a head on cached features: writes runs/<run_id>/ (config, checkpoint, history, test metrics).

    Two feature sets with a one-stream head make a two-stream run (--fusion late or early).
    Heads with large per-frame maps run each batch in micro-batches that fit --memory-budget;
    the run is the same training (its id and fingerprint do not change; dropout draws differ by cut).

    Example: vpipe train --dataset ucf101 --features li3d-rgb --features li3d-flow --head bilstm-softagg -O clusters=128
    """
    from vpipe.encode.budget import parse_bytes
    from vpipe.train import train as train_run

    result = train_run(
        context.workspace,
        config,
        run_id=run_id,
        progress=True,
        threads=threads,
        memory_budget=parse_bytes(memory_budget),
        micro_batch=micro_batch,
    )
    context.show(result.to_dict(), _print_training)


RunOption = Annotated[str, typer.Option("--run", "-r", help="Run id under runs/ (see `vpipe report`).")]


@dataset_command
def evaluate(
    run: RunOption,
    device: Device = "auto",
    *,
    context: CommandContext,
) -> None:
    """Rebuild a run's model from its directory and re-score its test split: writes evaluation.json.

    Example: vpipe evaluate --dataset ucf101 --run li3d-rgb-bilstm-mean-k128-s0
    """
    from vpipe.train import evaluate as evaluate_run, load_run
    from vpipe.train.metrics import TIMING_KEYS

    metrics = evaluate_run(context.workspace, run, device=device)
    stored = load_run(context.workspace, run).metrics
    keys = (set(stored) | set(metrics)) - set(TIMING_KEYS)
    differing = sorted(k for k in keys if stored.get(k) != metrics.get(k))
    if differing:
        err.print(f"[yellow]warning:[/] {', '.join(differing)} differ from the run's metrics.json")
    context.show(metrics, partial(_print_evaluation, equal=not differing))


def _print_evaluation(metrics: dict[str, Any], *, equal: bool) -> None:
    _print_metrics(metrics)
    if equal:
        typer.echo("equal to the run's metrics.json")


Runs = Annotated[
    Optional[str], typer.Option("--runs", help="Comma-separated run ids.", show_default="every completed run")
]
Tsne = Annotated[
    bool, typer.Option("--tsne/--no-tsne", help="Draw the t-SNE figure (needs the features and a forward pass).")
]


@dataset_command
def report(
    runs: Runs = None,
    tsne: Tsne = True,
    device: Device = "auto",
    *,
    context: CommandContext,
) -> None:
    """Plot training curves, confusion matrices and t-SNE per run; compare runs in report.md.

    Example: vpipe report --dataset ucf101 --runs li3d-rgb-lstm-mean-k128-s0,li3d-rgb-bilstm-mean-k128-s0
    """
    from vpipe.report import build_report

    chosen = [r.strip() for r in runs.split(",") if r.strip()] if runs else None
    context.show(build_report(context.workspace, chosen, tsne=tsne, device=device), _print_report)


def _print_report(result: dict[str, Any]) -> None:
    typer.echo(result["table"])
    typer.echo(f"\nwritten to {result['report']}; figures under runs/<id>/plots/")


def register(app: typer.Typer) -> None:
    for command in (heads, train, evaluate, report):
        app.command(command.__name__)(command)
