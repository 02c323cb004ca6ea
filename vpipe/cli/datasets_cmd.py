"""``vpipe datasets``: what can be read."""

from __future__ import annotations

from typing import Any

import typer

from vpipe.cli.options import Json, show


def datasets(json_output: Json = False) -> None:
    """List the dataset adapters and their splits.

    Example: vpipe datasets --json
    """
    from vpipe.data.registry import list_datasets

    rows = [
        {"name": d.name, "splits": list(d.split_numbers), "summary": d.summary} for d in list_datasets()
    ]
    show(rows, _print_datasets, json_output=json_output)


def _print_datasets(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["name"]) for r in rows)
    for row in rows:
        splits = ",".join(map(str, row["splits"]))
        typer.echo(f"{row['name']:<{width}}  splits {splits:<6} {row['summary']}")


def register(app: typer.Typer) -> None:
    app.command("datasets")(datasets)
