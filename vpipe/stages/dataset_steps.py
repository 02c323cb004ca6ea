"""Whole-dataset stages: fitting a codebook, training a head, evaluating and reporting.

Each does one job over the whole dataset rather than one per video, so each is a stage
with one item (:class:`~vpipe.pipeline.stage.WholeDatasetStage`); freshness comes from
fingerprints of their declared inputs, never from file existence or modification times:

* encode: the codebook, encodings and baseline fingerprints of
  :func:`vpipe.stages.encode.encode_status` (features index, train videos, options);
* train: the run fingerprint (trainer version, config, every input's index, the data
  split, external files such as a codebook), matched against finished runs;
* report: the ids and fingerprints of every completed run, stored beside the report.

``is_current`` computes the same fingerprints as the work without doing it, so
``vpipe status`` says exactly what ``vpipe run`` would do.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vpipe.artifacts import atomic_write_text
from vpipe.artifacts.run_record import RunRecord, finished_runs
from vpipe.errors import ConfigError, StageError
from vpipe.pipeline.fingerprint import fingerprint
from vpipe.pipeline.stage import Stage, WholeDatasetStage
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.train import TrainConfig, current_run

#: Bumped when the report's content changes for the same runs.
REPORT_VERSION = "report/2"


class EncodeStage(WholeDatasetStage):
    """Codebook, BoF / VLAD / FV encodings and the linear baseline of one feature set."""

    name = "encode"

    def __init__(self, ws: DatasetWorkspace, features: Stage, clusters: int, **options: Any) -> None:
        super().__init__(ws)
        self.features_stage, self.clusters, self.encode_options = features, clusters, options
        self.features: str = features.set_name  # type: ignore[attr-defined]

    @property
    def subject(self) -> str:
        return self.features

    @property
    def journal_name(self) -> str:
        return f"encode-{self.features}-k{self.clusters}"

    def requires(self) -> Sequence[Stage]:
        return (self.features_stage,)

    @property
    def artifact(self) -> Path:
        return self.workspace.codebook_path(self.features, self.clusters)

    def settings(self) -> dict[str, Any]:
        return {"clusters": self.clusters, **self.encode_options}

    def item_fingerprint(self) -> str:
        return fingerprint(self.name, self.features, self.settings())

    def is_current(self) -> bool:
        from vpipe.stages.encode import EncodeOptions, encode_status

        options = EncodeOptions(**self.encode_options)
        return all(encode_status(self.workspace, self.features, self.clusters, options).values())

    def work(self) -> dict[str, Any]:
        from vpipe.stages.encode import EncodeOptions, run_encode

        return run_encode(self.workspace, self.features, self.clusters, EncodeOptions(**self.encode_options))

    def describe(self) -> dict[str, Any]:
        return {"codebook": {"path": str(self.artifact)}}


class TrainStage(WholeDatasetStage):
    """One training run; a finished run with the same fingerprint is reused, not retrained.

    The main job's runs are small and train on one torch thread by default: on a busy
    2-core machine, 140 synthetic-sized videos took 32 s on one thread and 420 s on two,
    whose busy-waiting fought the other processes (on quieter cores: 15 s and 13 s).
    """

    name = "train"

    def __init__(self, ws: DatasetWorkspace, config: TrainConfig, inputs: Sequence[Stage], *, threads: int | None = 1) -> None:
        super().__init__(ws)
        self.config, self.inputs, self.threads = config, tuple(inputs), threads

    @property
    def subject(self) -> str:
        return self.config.inputs_name()

    @property
    def journal_name(self) -> str:
        return f"train-{self.config.inputs_name()}"

    def requires(self) -> Sequence[Stage]:
        return self.inputs

    @property
    def artifact(self) -> Path:
        return self.workspace.run_dir(self.config.default_run_id())

    def settings(self) -> dict[str, Any]:
        """The config and the head's version, so a dry run names a version bump too."""
        return {**self.config.identity(), "head_version": self.config.head_spec.version}

    def item_fingerprint(self) -> str:
        """The config's: the run fingerprint adds the inputs' content, which
        :meth:`is_current` matches against finished runs."""
        return fingerprint(self.name, self.settings())

    def is_current(self) -> bool:
        return _current_run(self.workspace, self.config) is not None

    def work(self) -> dict[str, Any]:
        from vpipe.train import train

        result = train(self.workspace, self.config, reuse=True, progress=True, threads=self.threads)
        return {"run_id": result.run_id, "test_accuracy": result.metrics["accuracy"]}

    def describe(self) -> dict[str, Any]:
        run = _current_run(self.workspace, self.config)
        return {} if run is None else {"run_id": run.run_id, "test_accuracy": run.metrics["accuracy"]}


def _current_run(
    workspace: DatasetWorkspace, config: TrainConfig, among: Sequence[RunRecord] | None = None
) -> RunRecord | None:
    """:func:`vpipe.train.current_run`, with a split the options cannot make (no validation
    videos) reported as the stage not being ready, like missing inputs, not as a crash."""
    try:
        return current_run(workspace, config, among)
    except ConfigError as error:
        raise StageError(str(error)) from error


class ReportStage(WholeDatasetStage):
    """Re-score the main job's runs, plot every completed run and write ``report.md``.

    ``trains`` are the runs the main job trains; they must exist. The report covers
    every completed run of the dataset, so a run trained by hand appears there too.
    """

    name = "report"

    def __init__(self, ws: DatasetWorkspace, trains: Sequence[TrainStage], *, tsne: bool = True) -> None:
        super().__init__(ws)
        self.trains, self.tsne = tuple(trains), tsne

    @property
    def label(self) -> str:
        return "evaluate"

    def requires(self) -> Sequence[Stage]:
        return self.trains

    @property
    def artifact(self) -> Path:
        return self.workspace.report_path

    @property
    def _stamp(self) -> Path:
        return self.journal_dir / "artifact.json"

    def settings(self) -> dict[str, Any]:
        return {"tsne": self.tsne}

    def _runs(self, finished: Sequence[RunRecord]) -> list[RunRecord]:
        """The main job's runs among the ``finished`` ones; not ready while one is missing."""
        found = []
        for stage in self.trains:
            run = _current_run(self.workspace, stage.config, finished)
            if run is None:
                raise StageError(f"no finished training run to evaluate: run `vpipe train --dataset {self.workspace.dataset}`")
            found.append(run)
        return found

    def _fingerprint(self, finished: Sequence[RunRecord]) -> str:
        """Of every finished run, since the report shows them all, not only the main job's."""
        return fingerprint(REPORT_VERSION, self.tsne, [(run.run_id, run.config.fingerprint) for run in finished])

    def item_fingerprint(self) -> str:
        finished = finished_runs(self.workspace.runs_dir)
        self._runs(finished)
        return self._fingerprint(finished)

    def is_current(self) -> bool:
        if not self.artifact.exists() or not self._stamp.exists():
            return False
        return json.loads(self._stamp.read_text()).get("fingerprint") == self.item_fingerprint()

    def work(self) -> dict[str, Any]:
        """Each finished run is read once here and its record handed to evaluation and the report."""
        from vpipe.report import build_report
        from vpipe.train import evaluate

        finished = finished_runs(self.workspace.runs_dir)
        main = self._runs(finished)
        for run in main:
            evaluate(self.workspace, run)
        report = build_report(self.workspace, finished, tsne=self.tsne)
        run_ids = [run.run_id for run in main]
        atomic_write_text(self._stamp, json.dumps({"fingerprint": self._fingerprint(finished), "runs": run_ids}))
        return {"runs": run_ids, "accuracy": _accuracies(main), **report}

    def describe(self) -> dict[str, Any]:
        main = self._runs(finished_runs(self.workspace.runs_dir))
        report = {"report": str(self.artifact), "table": self.artifact.read_text(), "plots": {}} if self.artifact.exists() else {}
        return {"runs": [run.run_id for run in main], "accuracy": _accuracies(main), **report}


def _accuracies(runs: Sequence[RunRecord]) -> dict[str, float]:
    return {run.run_id: run.metrics["accuracy"] for run in runs}
