"""The ``vpipe`` command."""

from __future__ import annotations

import typer

from vpipe import __version__
from vpipe.cli import (
    datasets_cmd,
    encode_cmd,
    extract_cmd,
    flow_cmd,
    pipeline_cmds,
    retrieval_cmd,
    train_cmd,
    verify_cmd,
)

app = typer.Typer(
    name="vpipe",
    help=(
        "Turn action-recognition video collections into a reusable feature cache.\n\n"
        "Start with:  vpipe run --dataset synthetic"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(show: bool) -> None:
    if show:
        typer.echo(f"vpipe {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version."),
) -> None:
    """Turn action-recognition video collections into a reusable feature cache."""


datasets_cmd.register(app)
pipeline_cmds.register(app)
flow_cmd.register(app)
extract_cmd.register(app)
encode_cmd.register(app)
train_cmd.register(app)
retrieval_cmd.register(app)
verify_cmd.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
