"""The run flags are declared once (vpipe/cli/stage_command.py) and every stage command has them."""

from __future__ import annotations

import json
import logging

import pytest
import typer
from typer.testing import CliRunner

from vpipe.cli.app import app
from vpipe.cli.options import compute_options
from vpipe.cli.stage_command import Reports, RunFlags, stage_command
from vpipe.pipeline.stage import StageReport

RUN_FLAGS = {"--retry-failed", "--strict", "--json", "--verbose", "--quiet", "--log-every"}


@pytest.mark.parametrize("name", ["probe", "plan", "flow", "extract", "run"])
def test_every_stage_command_takes_the_run_flags(name: str) -> None:
    command = typer.main.get_command(app).commands[name]
    flags = {opt for param in command.params for opt in param.opts}
    assert RUN_FLAGS <= flags


def toy_app(seen: list[RunFlags], failed: int) -> typer.Typer:
    toy = typer.Typer()

    @toy.command()
    @stage_command
    @compute_options
    def work(size: int = 3, *, flags: RunFlags, compute) -> Reports:
        seen.append(flags)
        return [StageReport(stage="toy", total=size, done=size - failed, failed=failed, computed=size)]

    @toy.command()
    @stage_command
    def look(*, flags: RunFlags) -> Reports | None:
        seen.append(flags)
        return None

    return toy


def test_flags_reach_the_command_and_its_reports_are_rendered() -> None:
    seen: list[RunFlags] = []
    result = CliRunner().invoke(toy_app(seen, failed=0), ["work", "--size", "5", "--retry-failed", "--json", "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert seen == [RunFlags(retry_failed=True, json_output=True)]
    out = json.loads(result.stdout)
    assert out["failed"] == 0 and out["stages"][0]["total"] == 5 and out["stages"][0]["stage"] == "toy"


def test_strict_exits_non_zero_when_an_item_failed() -> None:
    toy = toy_app([], failed=2)
    lenient = CliRunner().invoke(toy, ["work"])
    assert lenient.exit_code == 0 and "toy: 1/3 done, 2 failed" in lenient.stdout
    strict = CliRunner().invoke(toy, ["work", "--strict"])
    assert strict.exit_code == 1


def test_logging_is_set_up_before_the_command_runs_and_none_prints_nothing(monkeypatch) -> None:
    levels: list[int] = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: levels.append(kw["level"]))
    seen: list[RunFlags] = []
    result = CliRunner().invoke(toy_app(seen, failed=0), ["look", "--verbose"])
    assert result.exit_code == 0 and result.stdout == ""
    assert levels == [logging.INFO] and seen == [RunFlags()]
