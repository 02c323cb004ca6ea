"""Every ``vpipe`` command line in README.md and docs/ names a command and options that exist.

A renamed or removed option otherwise survives in the docs, where a user copies it and
meets "No such option" (docs/descriptors.md asked ``vpipe train`` for ``--temporal``,
which is a head option, ``-O temporal=...``).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from vpipe.cli.app import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```(?:bash|sh|console)?\n(.*?)```", re.S)


def documented_commands() -> list[tuple[str, str]]:
    """(file, command line) for every line of a code block that runs ``vpipe``."""
    found = []
    for path in DOCS:
        for block in BLOCK.findall(path.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.split(" #")[0].strip().removeprefix("$ ")
                if line.startswith("vpipe "):
                    found.append((path.name, line))
    return found


def unknown_words(line: str) -> list[str]:
    """The subcommand or options of ``line`` that the CLI does not have."""
    words = shlex.split(line)[1:]
    command = typer.main.get_command(app)
    while hasattr(command, "commands") and words and not words[0].startswith("-"):  # a group: typer's own click
        if words[0] not in command.commands:
            return [words[0]]
        command, words = command.commands[words[0]], words[1:]
    options = {name for param in command.params for name in (*param.opts, *param.secondary_opts)}
    given = [word.split("=")[0] for word in words if word.startswith("-") and not word[1:2].isdigit()]
    return [name for name in given if name not in options]


COMMANDS = documented_commands()


def test_the_docs_show_commands() -> None:
    assert len(COMMANDS) > 30, "the code blocks of README.md and docs/ were not found"


@pytest.mark.parametrize(("doc", "line"), COMMANDS, ids=[f"{d}:{i}" for i, (d, _) in enumerate(COMMANDS)])
def test_a_documented_command_line_names_what_the_cli_has(doc: str, line: str) -> None:
    assert unknown_words(line) == [], f"{doc}: {line}"


def test_a_wrong_option_is_caught() -> None:
    assert unknown_words("vpipe train --dataset ucf101 --temporal bilstm") == ["--temporal"]
    assert unknown_words("vpipe trian --dataset ucf101") == ["trian"]
    assert unknown_words("vpipe train --dataset ucf101 -O temporal=bilstm --lr=1e-3") == []
