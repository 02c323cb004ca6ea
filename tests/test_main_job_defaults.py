"""Datasets declare their own main-job defaults; the chain has no special case per dataset."""

from __future__ import annotations

from pathlib import Path

from vpipe.artifacts.records import DatasetConfig
from vpipe.data.base import PAPER_DEFAULTS, MainJobDefaults, main_job_defaults
from vpipe.data.registry import DATASETS
from vpipe.data.synthetic import SyntheticDataset
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.dataset_steps import EncodeStage, TrainStage
from vpipe.stages.main_job import ChainOptions, main_job
from vpipe.stages.plan import PlanStage
from vpipe.video.plan import sampler_config


def chain(tmp_path: Path, adapter: str, options: ChainOptions | None = None):
    ws = DatasetWorkspace(tmp_path, adapter)
    return main_job(ws, DatasetConfig(adapter=adapter, root=str(tmp_path / "videos"), split=1), options or ChainOptions())


def test_real_collections_take_the_papers_settings_and_synthetic_its_small_clips() -> None:
    for name, adapter in DATASETS.items():
        expected = SyntheticDataset.main_job if name == "synthetic" else PAPER_DEFAULTS
        assert main_job_defaults(adapter) == expected, name
    assert PAPER_DEFAULTS == MainJobDefaults(li3d_options={}, clusters=128)


def test_the_chain_plans_and_encodes_with_what_the_dataset_declares(tmp_path: Path) -> None:
    for adapter, li3d, clusters in (("ucf101", {}, 128), ("synthetic", dict(SyntheticDataset.main_job.li3d_options), 16)):
        steps = chain(tmp_path / adapter, adapter)
        plan = next(s for s in steps if isinstance(s, PlanStage))
        assert plan.config == sampler_config("li3d", **li3d), adapter
        assert [s.clusters for s in steps if isinstance(s, EncodeStage)] == [clusters]
        assert {s.config.head_options["clusters"] for s in steps if isinstance(s, TrainStage)} == {clusters}


def test_user_options_win_over_the_dataset_defaults(tmp_path: Path) -> None:
    steps = chain(tmp_path, "synthetic", ChainOptions(sampler_options={"need": 32}, clusters=8))
    plan = next(s for s in steps if isinstance(s, PlanStage))
    expected = {**SyntheticDataset.main_job.li3d_options, "need": 32}
    assert plan.config == sampler_config("li3d", **expected)
    assert [s.clusters for s in steps if isinstance(s, EncodeStage)] == [8]
    tsn = next(s for s in chain(tmp_path, "synthetic", ChainOptions(sampler="tsn")) if isinstance(s, PlanStage))
    assert tsn.config == sampler_config("tsn"), "the dataset's clips are li3d options"
