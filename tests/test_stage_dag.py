"""The order of a job derived from what its stages declare, and why a dry run says items are stale."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.test_cli import TINY, invoke, make_folder_tree
from vpipe.artifacts.atomic import atomic_write_text
from vpipe.artifacts.records import DatasetConfig
from vpipe.errors import ConfigError
from vpipe.pipeline.dag import select_stages, stage_order
from vpipe.pipeline.executor import InProcessExecutor, ItemFn, WorkItem
from vpipe.pipeline.fingerprint import fingerprint
from vpipe.pipeline.journal import Record
from vpipe.pipeline.reasons import changes
from vpipe.pipeline.runner import run_stages
from vpipe.pipeline.stage import Stage
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.dataset import configure_dataset
from vpipe.stages.extract import ExtractStage
from vpipe.stages.main_job import ChainOptions, main_job
from vpipe.stages.plan import PlanStage

#: The main job's order before it was derived: the list ``vpipe run`` used to hold.
MAIN_JOB_ORDER = [
    "probe", "plan", "flow", "extract:li3d-rgb", "extract:li3d-flow", "extract:hoghofmbh", "encode:li3d-rgb",
    "retrieval", "train:li3d-rgb", "train:li3d-flow", "train:li3d-rgb+li3d-flow-late", "train:hoghofmbh", "evaluate",
]  # fmt: skip


def synthetic_job(tmp_path: Path) -> list[Stage]:
    ws = DatasetWorkspace(tmp_path, "synthetic")
    return main_job(ws, DatasetConfig(adapter="synthetic", root=str(tmp_path / "src"), split=1), ChainOptions())


def test_the_derived_order_is_the_main_jobs_order(tmp_path: Path) -> None:
    assert [stage.label for stage in synthetic_job(tmp_path)] == MAIN_JOB_ORDER


def test_any_listing_of_the_stages_runs_each_after_what_it_reads(tmp_path: Path) -> None:
    stages = synthetic_job(tmp_path)
    for seed in range(5):
        shuffled = stages[:]
        random.Random(seed).shuffle(shuffled)
        order = [stage.journal_name for stage in stage_order(shuffled)]
        for stage in stages:
            for required in stage.requires():
                assert order.index(required.journal_name) < order.index(stage.journal_name), (seed, stage.label)
    extract = next(stage for stage in stages if stage.label == "extract:li3d-flow")
    assert [required.label for required in extract.requires()] == ["plan", "flow"]


def test_a_cycle_and_two_stages_making_one_artifact_are_refused(tmp_path: Path) -> None:
    ws = DatasetWorkspace(tmp_path, "toy")
    first, second = Counting(ws, "a"), Counting(ws, "b")
    first.upstream, second.upstream = second, first
    with pytest.raises(ConfigError, match="require each other"):
        stage_order([first, second])
    with pytest.raises(ConfigError, match="make the same artifact: count-clips"):
        stage_order([Counting(ws, "clips"), Counting(ws, "clips")])


def count_clips(video: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"video_id": video["video_id"], "clips": video["clips"]}]


class Counting(Stage):
    """A stage a test adds: clips per video, read from the plan it declares."""

    name = "count"
    in_process = True

    def __init__(self, workspace: DatasetWorkspace, tag: str, upstream: Stage | None = None) -> None:
        super().__init__(workspace)
        self.tag, self.upstream = tag, upstream

    @property
    def journal_name(self) -> str:
        return f"count-{self.tag}"

    @property
    def subject(self) -> str:
        return self.tag

    def requires(self) -> tuple[Stage, ...]:
        return (self.upstream,) if self.upstream is not None else ()

    @property
    def artifact(self) -> Path:
        return self.workspace.dir / f"clips-{self.tag}.json"

    def items(self) -> list[WorkItem]:
        assert isinstance(self.upstream, PlanStage)
        plan = pq.read_table(self.upstream.artifact, columns=["video_id"]).to_pandas()
        counts = plan.groupby("video_id").size()
        return [WorkItem(key, fingerprint(key, int(n)), {"video_id": key, "clips": int(n)}) for key, n in counts.items()]

    def item_fn(self) -> ItemFn:
        return count_clips

    def write_artifact(self, items: list[WorkItem], records: dict[str, Record], fingerprint: str) -> None:
        atomic_write_text(self.artifact, json.dumps({key: r.rows[0]["clips"] for key, r in sorted(records.items())}))


def test_a_stage_added_in_a_test_runs_after_what_it_reads(tmp_path: Path) -> None:
    """Nothing in the main job names the new stage; its declaration alone places it."""
    ws = DatasetWorkspace(tmp_path / "ws", "clips")
    config = configure_dataset(ws, adapter="folder", root=make_folder_tree(tmp_path))
    options = ChainOptions(sampler_options={"need": 8, "size": 32, "short_side": 48}, clusters=4)
    stages = main_job(ws, config, options)
    plan = next(stage for stage in stages if isinstance(stage, PlanStage))
    added = Counting(ws, "per-video", upstream=plan)
    order = stage_order([added, *stages])
    assert [stage.label for stage in order][:4] == ["probe", "plan", "count:per-video", "flow"]

    reports = run_stages(select_stages(order, until="count:per-video"), InProcessExecutor(), progress=False)
    assert [report.stage for report in reports] == ["probe", "plan", "count:per-video"]
    assert reports[-1].done == 10 and reports[-1].failed == 0
    counts = json.loads(added.artifact.read_text())
    assert len(counts) == 10 and all(n >= 1 for n in counts.values())


def test_until_on_the_main_job_leaves_out_what_the_named_stage_does_not_read(tmp_path: Path) -> None:
    stages = synthetic_job(tmp_path)
    assert [stage.label for stage in select_stages(stages, until="extract:li3d-rgb")] == [
        "probe", "plan", "extract:li3d-rgb",
    ], "flow precedes in the run order, and the rgb features do not read it"  # fmt: skip
    assert [stage.label for stage in select_stages(stages, until="train:hoghofmbh")] == [
        "probe", "plan", "flow", "extract:hoghofmbh", "train:hoghofmbh",
    ]  # fmt: skip


def test_changes_name_the_option_and_the_input(tmp_path: Path) -> None:
    recorded = {"options": {"sampler": {"need": 8, "size": 32}, "decoder": "auto"}, "inputs": {"plan": "a", "flow": "b"}}
    now = {"options": {"sampler": {"need": 6, "size": 32}}, "inputs": {"plan": "a", "flow": "c"}}
    assert changes(recorded, now) == ['decoder: "auto" -> (unset)', "sampler.need: 8 -> 6", "flow was rewritten"]
    assert changes(recorded, recorded) == []


def dry_run(*args: Any) -> dict[str, Any]:
    result = invoke(*args, "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_dry_run_on_a_fresh_a_finished_and_a_partly_stale_workspace(tmp_path: Path) -> None:
    root = make_folder_tree(tmp_path)
    base = ["run", "--dataset", "clips", "--adapter", "folder", "--root", root, "--workspace", tmp_path / "ws", *TINY]

    fresh = dry_run(*base)
    assert list(fresh) == MAIN_JOB_ORDER
    assert (fresh["probe"]["new"], fresh["probe"]["done"], fresh["probe"]["total"]) == (13, 0, 13)
    assert fresh["plan"]["after"] == ["probe"] and "reason" not in fresh["plan"], "no manifest yet: the probe makes it"
    assert fresh["extract:li3d-flow"]["after"] == ["plan", "flow"]
    assert fresh["evaluate"]["after"] == [name for name in MAIN_JOB_ORDER if name.startswith("train:")]
    text = invoke(*base, "--dry-run").stdout
    assert "plan: will run after probe\n" in text and "evaluate: will run after train (4 stages)\n" in text

    assert invoke(*base, "--until", "flow").exit_code == 0
    finished = dry_run(*base, "--until", "flow")
    assert {name: (s["done"], s.get("stale", 0), s.get("new", 0)) for name, s in finished.items()} == {
        "probe": (10, 0, 0), "plan": (10, 0, 0), "flow": (10, 0, 0),
    }  # fmt: skip

    need = base.index("need=8")
    changed = dry_run(*base[:need], "need=6", *base[need + 1 :], "--until", "flow")
    assert (changed["plan"]["stale"], changed["plan"]["why"]) == (10, "sampler.need: 8 -> 6")
    assert changed["flow"]["after"] == ["plan"], "the plan is rewritten first, whatever flow's records say now"
    assert changed["flow"]["done"] == 10 and "stale" not in changed["flow"], "its counts are of the plan on disk"

    # The plan rewritten with need=6: the flow is stale because its input changed.
    assert invoke(*base[:need], "need=6", *base[need + 1 :], "--until", "plan").exit_code == 0
    rewritten = dry_run(*base[:need], "need=6", *base[need + 1 :], "--until", "flow")
    assert (rewritten["flow"]["stale"], rewritten["flow"]["why"]) == (10, "plan was rewritten")
    assert "after" not in rewritten["flow"] and "after" not in rewritten["plan"]
    text = invoke(*base[:need], "need=6", *base[need + 1 :], "--until", "flow", "--dry-run").stdout
    assert "flow: 0 done, 0 failed, 10 total, 10 stale (plan was rewritten)" in text


@pytest.mark.parametrize("streams", [("rgb", "flow"), ("rgb",), ("flow",)])
def test_a_backbone_of_frames_and_flow_is_extracted_once_after_the_flow(tmp_path: Path, streams: tuple[str, ...]) -> None:
    """``vpipe run --backbone hoghofmbh`` failed with "--features lists a feature set twice"
    (one extract per stream, both named hoghofmbh), and with ``--stream rgb`` it left out
    the flow stage its features read."""
    ws = DatasetWorkspace(tmp_path, "synthetic")
    config = DatasetConfig(adapter="synthetic", root=str(tmp_path / "src"), split=1)
    stages = main_job(ws, config, ChainOptions(backbone="hoghofmbh", streams=streams))
    assert [stage.label for stage in stages] == [
        "probe", "plan", "flow", "extract:hoghofmbh", "encode:hoghofmbh", "retrieval", "train:hoghofmbh", "evaluate",
    ]  # fmt: skip
    extract = next(stage for stage in stages if stage.label == "extract:hoghofmbh")
    assert [required.label for required in extract.requires()] == ["plan", "flow"]
    as_main_job_made_it = ExtractStage(ws, backbone="hoghofmbh", stream="rgb", plan=extract.plan)
    assert extract.model_fingerprint() == as_main_job_made_it.model_fingerprint(), "naming a stream made it stale"
