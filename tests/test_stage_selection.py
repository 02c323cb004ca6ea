"""Choosing stages by name: ``vpipe run --only / --until / --dry-run``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.test_cli import TINY, invoke, make_folder_tree
from tests.toy_stage import SquareStage
from vpipe.errors import ConfigError
from vpipe.pipeline.dag import select_stages
from vpipe.pipeline.workspace import DatasetWorkspace


@dataclass(frozen=True)
class Named:
    """A stage as selection sees it: a name and what it reads."""

    label: str
    reads: tuple[Named, ...] = ()

    @property
    def journal_name(self) -> str:
        return self.label

    def requires(self) -> tuple[Named, ...]:
        return self.reads


def main_job_shape() -> list[Named]:
    probe = Named("probe")
    plan = Named("plan", (probe,))
    flow = Named("flow", (plan,))
    rgb, motion = Named("extract:li3d-rgb", (plan,)), Named("extract:li3d-flow", (plan, flow))
    descriptors = Named("extract:hoghofmbh", (plan, flow))
    encode = Named("encode:li3d-rgb", (rgb,))
    trains = [Named("train:li3d-rgb", (rgb,)), Named("train:li3d-flow", (motion,))]
    return [probe, plan, flow, rgb, motion, descriptors, encode, Named("retrieval", (encode,)), *trains,
            Named("evaluate", tuple(trains))]  # fmt: skip


MAIN_JOB = main_job_shape()


def names(stages) -> list[str]:
    return [stage.label for stage in stages]


def test_a_stage_is_named_by_its_kind_and_subject_joined_by_a_colon(tmp_path: Path) -> None:
    """One name everywhere: status, dry runs and reports print what --only and --until take."""

    class PerFeatureSet(SquareStage):
        subject = "li3d-rgb"

    ws = DatasetWorkspace(tmp_path, "toy")
    assert SquareStage(ws, range(2)).label == "square"
    assert PerFeatureSet(ws, range(2)).label == "square:li3d-rgb"
    assert names(select_stages([SquareStage(ws, range(2)), PerFeatureSet(ws, range(2))], only=["square:li3d-rgb"])) == [
        "square:li3d-rgb"
    ]


def test_until_keeps_the_named_stage_and_what_it_reads_and_only_the_named_ones() -> None:
    assert names(select_stages(MAIN_JOB, until="extract:li3d-rgb")) == ["probe", "plan", "extract:li3d-rgb"], (
        "flow comes earlier in the run order, but the rgb features do not read it"
    )
    assert names(select_stages(MAIN_JOB, until="extract:li3d-flow")) == ["probe", "plan", "flow", "extract:li3d-flow"]
    assert names(select_stages(MAIN_JOB, until="extract")) == [
        "probe", "plan", "flow", "extract:li3d-rgb", "extract:li3d-flow", "extract:hoghofmbh",
    ], "a kind: every stage of it, with what they read"  # fmt: skip
    assert names(select_stages(MAIN_JOB, until="train:li3d-flow")) == [
        "probe", "plan", "flow", "extract:li3d-flow", "train:li3d-flow",
    ], "neither the rgb branch nor the other train run"  # fmt: skip
    assert names(select_stages(MAIN_JOB, until="evaluate"))[-3:] == ["train:li3d-rgb", "train:li3d-flow", "evaluate"]
    assert "retrieval" not in names(select_stages(MAIN_JOB, until="evaluate"))
    assert names(select_stages(MAIN_JOB, only=["flow", "train"])) == ["flow", "train:li3d-rgb", "train:li3d-flow"]
    assert names(select_stages(MAIN_JOB, only=["train", "probe"], until="train:li3d-rgb")) == ["probe", "train:li3d-rgb"]
    assert select_stages(MAIN_JOB) == MAIN_JOB


def test_an_unknown_name_lists_the_stages_of_the_run() -> None:
    with pytest.raises(ConfigError, match=r"no stage named 'extract:li3d-rbg' in this run; its stages: probe, plan, flow"):
        select_stages(MAIN_JOB, until="extract:li3d-rbg")
    with pytest.raises(ConfigError, match="no stage named 'trian'"):
        select_stages(MAIN_JOB, only=["trian"])


def test_cli_until_runs_the_prefix_dry_run_counts_and_changes_nothing(tmp_path: Path) -> None:
    root = make_folder_tree(tmp_path)
    base = ["run", "--dataset", "clips", "--adapter", "folder", "--root", root, "--workspace", tmp_path / "ws", *TINY]
    ran = invoke(*base, "--until", "plan", "--json")
    assert ran.exit_code == 0, ran.output
    assert [s["stage"] for s in json.loads(ran.stdout)["stages"]] == ["probe", "plan"]

    workspace = tmp_path / "ws" / "clips"
    before = {p: p.stat().st_mtime_ns for p in workspace.rglob("*") if p.is_file()}
    dry = invoke(*base, "--until", "flow", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    counts = json.loads(dry.stdout)
    assert list(counts) == ["probe", "plan", "flow"]
    assert (counts["probe"]["done"], counts["probe"]["failed"], counts["probe"]["total"]) == (10, 3, 13)
    assert (counts["flow"]["done"], counts["flow"]["total"], counts["flow"]["new"]) == (0, 10, 10), "flow: ten videos to do"
    assert {p: p.stat().st_mtime_ns for p in workspace.rglob("*") if p.is_file()} == before, "a dry run writes nothing"
    assert not (workspace / "flow").exists()

    only = invoke(*base, "--only", "flow", "--json")
    assert [s["stage"] for s in json.loads(only.stdout)["stages"]] == ["flow"]
    assert json.loads(invoke(*base, "--until", "flow", "--dry-run", "--json").stdout)["flow"]["done"] == 10
    assert "flow: 10 done, 0 failed, 10 total\n" in invoke(*base, "--until", "flow", "--dry-run").stdout
    changed = [*base[: base.index("need=8")], "need=6", *base[base.index("need=8") + 1 :]]
    stale = json.loads(invoke(*changed, "--until", "flow", "--dry-run", "--json").stdout)
    assert (stale["plan"]["stale"], stale["plan"]["done"]) == (10, 0), "a changed sampler option makes the plan stale"
    assert "stale" not in stale["probe"] and "new" not in stale["plan"]
    assert "plan: 0 done, 0 failed, 10 total, 10 stale (sampler.need: 8 -> 6)" in invoke(
        *changed, "--until", "plan", "--dry-run"
    ).stdout
    text = invoke(*base, "--only", "extract:li3d-rbg").output
    assert "no stage named 'extract:li3d-rbg'" in text and "extract:li3d-rgb" in text
