"""Whole-dataset stages: fitting a codebook, training a head, evaluating and reporting.

They do one job over the whole dataset rather than one per video, so they have no item
journal; freshness still comes from fingerprints of their declared inputs, never from
file existence or modification times:

* encode: the codebook, encodings and baseline fingerprints of
  :func:`vpipe.stages.encode.encode_status` (features index, train videos, options);
* train: the run fingerprint (trainer version, config, every input's index, the data
  split, external files such as a codebook), matched against finished runs;
* report: the ids and fingerprints of every completed run, stored beside the report.

``status()`` computes the same fingerprints as ``run()`` without doing the work, so
``vpipe status`` says exactly what ``vpipe run`` would do.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from typing import Any

from vpipe.artifacts import atomic_write_text
from vpipe.errors import ConfigError, StageError
from vpipe.pipeline.fingerprint import fingerprint
from vpipe.pipeline.stage import StageReport
from vpipe.pipeline.workspace import DatasetWorkspace
from vpipe.train import TrainConfig, completed_runs, current_run, load_run

#: Bumped when the report's content changes for the same runs.
REPORT_VERSION = "report/2"


class DatasetStep(ABC):
    """A stage over the whole dataset: ``status`` without work, ``run`` to bring it up to date."""

    label: str

    def status(self) -> StageReport:
        try:
            current = self.is_current()
        except (StageError, ConfigError) as error:  # e.g. a split with no validation videos
            return StageReport(stage=self.label, ready=False, reason=str(error))
        return StageReport(stage=self.label, total=1, done=int(current), artifact=self.artifact)

    @property
    @abstractmethod
    def artifact(self) -> str: ...

    @abstractmethod
    def is_current(self) -> bool:
        """Whether ``run`` would find nothing to do; raises StageError when inputs are missing."""

    @abstractmethod
    def run(self) -> StageReport: ...


class EncodeStep(DatasetStep):
    """Codebook, BoF / VLAD / FV encodings and the linear baseline of one feature set."""

    def __init__(self, ws: DatasetWorkspace, features: str, clusters: int, **options: Any) -> None:
        self.ws, self.features, self.clusters, self.options = ws, features, clusters, options
        self.label = f"encode {features}"

    @property
    def artifact(self) -> str:
        return str(self.ws.codebook_path(self.features, self.clusters))

    def is_current(self) -> bool:
        from vpipe.stages.encode import encode_status

        return all(encode_status(self.ws, self.features, self.clusters, **self.options).values())

    def run(self) -> StageReport:
        from vpipe.stages.encode import run_encode

        started = time.perf_counter()
        summary = run_encode(self.ws, self.features, self.clusters, **self.options)
        computed = int(summary["codebook"]["fitted"]) + sum(bool(e.get("written")) for e in summary["encodings"].values())
        return StageReport(
            stage=self.label,
            total=1,
            done=1,
            computed=computed,
            up_to_date=0 if computed else 1,
            seconds=time.perf_counter() - started,
            artifact=summary["codebook"]["path"],
            details=summary,
        )


class TrainStep(DatasetStep):
    """One training run; a finished run with the same fingerprint is reused, not retrained.

    The main job's runs are small and train on one torch thread by default: on a busy
    2-core machine, 140 synthetic-sized videos took 32 s on one thread and 420 s on two,
    whose busy-waiting fought the other processes (on quieter cores: 15 s and 13 s).
    """

    def __init__(self, ws: DatasetWorkspace, config: TrainConfig, *, threads: int | None = 1) -> None:
        self.ws, self.config, self.threads = ws, config, threads
        self.label = f"train {config.inputs_name()}"

    @property
    def artifact(self) -> str:
        return str(self.ws.run_dir(self.config.default_run_id()))

    def is_current(self) -> bool:
        return current_run(self.ws, self.config) is not None

    def run(self) -> StageReport:
        from vpipe.train import train

        started = time.perf_counter()
        result = train(self.ws, self.config, reuse=True, progress=True, threads=self.threads)
        return StageReport(
            stage=self.label,
            total=1,
            done=1,
            computed=int(not result.reused),
            up_to_date=int(result.reused),
            seconds=time.perf_counter() - started,
            artifact=str(result.directory),
            details={"run_id": result.run_id, "test_accuracy": result.metrics["accuracy"]},
        )


class ReportStep(DatasetStep):
    """Re-score the main job's runs, plot every completed run and write ``report.md``.

    ``configs`` are the runs the main job trains; they must exist. The report covers
    every completed run of the dataset, so a run trained by hand appears there too.
    """

    label = "evaluate"

    def __init__(self, ws: DatasetWorkspace, configs: list[TrainConfig], *, tsne: bool = True) -> None:
        self.ws, self.configs, self.tsne = ws, configs, tsne

    @property
    def artifact(self) -> str:
        return str(self.ws.report_path)

    @property
    def _marker(self):
        return self.ws.state_dir / "report" / "artifact.json"

    def _runs(self) -> list[str]:
        found = [current_run(self.ws, config) for config in self.configs]
        if any(run is None for run in found):
            raise StageError(f"no finished training run to evaluate: run `vpipe train --dataset {self.ws.dataset}`")
        return [run.run_id for run in found]

    def _fingerprint(self) -> str:
        stamps = [(run_id, load_run(self.ws, run_id).config.fingerprint) for run_id in completed_runs(self.ws)]
        return fingerprint(REPORT_VERSION, self.tsne, stamps)

    def is_current(self) -> bool:
        self._runs()
        if not self.ws.report_path.exists() or not self._marker.exists():
            return False
        return json.loads(self._marker.read_text()).get("fingerprint") == self._fingerprint()

    def run(self) -> StageReport:
        from vpipe.report import build_report
        from vpipe.train import evaluate

        started = time.perf_counter()
        run_ids = self._runs()
        if self.is_current():
            report = {"report": str(self.ws.report_path), "table": self.ws.report_path.read_text(), "plots": {}}
            computed = 0
        else:
            for run_id in run_ids:
                evaluate(self.ws, run_id)
            report = build_report(self.ws, tsne=self.tsne)
            atomic_write_text(self._marker, json.dumps({"fingerprint": self._fingerprint(), "runs": run_ids}))
            computed = 1
        accuracies = {run_id: load_run(self.ws, run_id).metrics["accuracy"] for run_id in run_ids}
        return StageReport(
            stage=self.label,
            total=1,
            done=1,
            computed=computed,
            up_to_date=1 - computed,
            seconds=time.perf_counter() - started,
            artifact=report["report"],
            details={"runs": run_ids, "accuracy": accuracies, **report},
        )
