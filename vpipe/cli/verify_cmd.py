"""``vpipe verify``: check stored artifacts against their checksums, and mark damage stale."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer

from vpipe.cli.dataset_command import CommandContext, dataset_command

if TYPE_CHECKING:
    from vpipe.stages.verify import VerifyReport

StageOption = Annotated[
    Optional[list[str]],
    typer.Option(
        "--stage",
        help="Check only this kind of artifact (repeatable): flow, extract, encode, train, index or tables.",
        show_default="all",
    ),
]
Repair = Annotated[
    bool,
    typer.Option("--repair", help="Mark the work in damaged files stale, so the next `vpipe run` recomputes it."),
]


@dataset_command
def verify(
    stage: StageOption = None,
    repair: Repair = False,
    *,
    context: CommandContext,
) -> None:
    """Check every shard, codebook, encoding, checkpoint, retrieval index and table against its checksum.

    Prints one line per damaged or missing file with the videos it holds; exits 1 if any.

    Example: vpipe verify --dataset synthetic --repair
    """
    from vpipe.errors import ConfigError
    from vpipe.stages.verify import KINDS, repair as repair_damage, verify as run_verify

    unknown = sorted(set(stage or ()) - set(KINDS))
    if unknown:
        raise ConfigError(f"--stage {unknown[0]!r} is not one of {', '.join(KINDS)}")
    report = run_verify(context.workspace, tuple(stage or KINDS))
    repaired = repair_damage(context.workspace, report.problems) if repair and report.problems else None
    context.show(
        report.to_dict() | ({"repaired": repaired} if repaired is not None else {}),
        lambda _: _print_verification(report, repaired, context.workspace.dataset),
    )
    if report.problems:
        raise typer.Exit(1)


def _print_verification(report: VerifyReport, repaired: dict[str, int] | None, dataset: str) -> None:
    for problem in report.problems:
        typer.echo(problem.line())
    typer.echo(
        f"verify: {report.files} files, {report.bytes / 1e6:.1f} MB in {report.seconds:.1f}s, "
        f"{len(report.problems)} damaged or missing"
    )
    if repaired is not None:
        typer.echo(
            f"repair: {repaired['videos']} videos and {repaired['files']} files marked stale; "
            f"`vpipe run --dataset {dataset}` recomputes them"
        )
    elif report.problems:
        typer.echo(f"run `vpipe verify --dataset {dataset} --repair` to mark them stale, then `vpipe run`")


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
