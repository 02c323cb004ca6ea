"""Every command's --help: an example, defaults the CLI library shows, one vocabulary."""

from __future__ import annotations

import re
import typing

import pytest
import typer
from typer.testing import CliRunner

from vpipe.cli.app import app

runner = CliRunner()


def commands() -> list[tuple[str, object]]:
    """Every command registered in the app, sub-command groups included, by its full name."""
    found = []

    def walk(prefix: tuple[str, ...], command) -> None:
        if hasattr(command, "commands"):
            for name, sub in sorted(command.commands.items()):
                walk((*prefix, name), sub)
        else:
            found.append((" ".join(prefix), command))

    walk((), typer.main.get_command(app))
    return found


def is_option(param) -> bool:
    return getattr(param, "param_type_name", "") == "option"


def choices_of(param) -> tuple:
    annotation = param.type_descriptor.annotation
    return typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()


COMMANDS = commands()
IDS = [name for name, _ in COMMANDS]


def test_the_walk_finds_the_main_commands():
    assert {"run", "probe", "plan", "status", "flow", "extract", "datasets", "backbones"} <= set(IDS)


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=IDS)
def test_help_has_an_example_and_no_blank_default(name, command):
    result = runner.invoke(app, [*name.split(), "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "Example: vpipe " in result.output, f"`vpipe {name} --help` shows no example"
    text = " ".join(result.output.split())
    assert "[default: ]" not in text and "[default: ()]" not in text, f"`vpipe {name}`: an empty default"
    for param in command.params:
        if not is_option(param) or param.hidden:
            continue
        where = f"`vpipe {name}` {param.opts[0]}"
        help_text = param.help or ""
        assert "[default" not in help_text, f"{where}: typer drops a hand-written default; use show_default"
        assert not re.search(r"\s[.,;:](\s|$)|\s\)", help_text), f"{where}: help has a gap: {help_text!r}"
        if isinstance(param.show_default, str):
            assert param.show_default.strip(), f"{where}: empty show_default"


@pytest.mark.parametrize(("name", "command"), COMMANDS, ids=IDS)
def test_one_vocabulary_for_shared_options(name, command):
    options = {opt: param for param in command.params if is_option(param) for opt in param.opts}
    if "--device" in options:
        choices = choices_of(options["--device"])
        assert choices == ("auto", "cpu", "cuda"), f"`vpipe {name}` --device takes {choices or 'any text'}"
    if "-o" in options:
        assert "--option" in options["-o"].opts, f"`vpipe {name}`: -o must mean --option KEY=VALUE"
