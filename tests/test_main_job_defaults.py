"""Datasets declare their own main-job defaults; the chain has no special case per dataset."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import vpipe.stages.dataset as stages_dataset
from vpipe.artifacts.records import DatasetConfig
from vpipe.data.base import GENERATED_ROOT, PAPER_DEFAULTS, MainJobDefaults, VideoEntry, main_job_defaults
from vpipe.data.registry import DATASETS
from vpipe.data.synthetic import SyntheticDataset
from vpipe.errors import ConfigError
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.stages.dataset import configure_dataset, list_videos
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


class Painted:
    """A dataset that writes its own videos: what the built-in synthetic set declares."""

    name, summary, split_numbers = "painted", "test videos written on demand", (1,)

    def __init__(self) -> None:
        self.generated: list[tuple[Path, dict]] = []

    def generate(self, root: Path, **options: object) -> Path:
        self.generated.append((root, options))
        return root

    def prepare(self, root: Path, *, split: int = 1) -> list[VideoEntry]:
        return [VideoEntry("a/a_0", root / "a_0.avi", 0, "a", "train")]


def test_an_adapter_that_writes_its_videos_declares_it_and_the_stages_name_no_dataset(tmp_path, monkeypatch) -> None:
    painted = Painted()
    monkeypatch.setitem(DATASETS, "painted", painted)
    ws = DatasetWorkspace(tmp_path, "painted")
    config = configure_dataset(ws, generator_options={"videos_per_class": 3, "seed": None})
    assert (config.root_path, config.synthetic) == (ws.dir / GENERATED_ROOT, {"videos_per_class": 3}), "no --root needed"
    again = configure_dataset(ws, generator_options={"seed": 5})
    assert again.synthetic == {"videos_per_class": 3, "seed": 5}, "given options merge over the recorded ones"
    assert painted.generated == []
    _, entries = list_videos(again)
    assert painted.generated == [(ws.dir / GENERATED_ROOT, {"videos_per_class": 3, "seed": 5})], "written before listing"
    assert [entry.video_id for entry in entries] == ["a/a_0"]

    with pytest.raises(ConfigError, match="needs --root"):
        configure_dataset(DatasetWorkspace(tmp_path, "plain"), adapter="folder")
    assert '"synthetic"' not in inspect.getsource(stages_dataset), "the stage layer names no dataset"
