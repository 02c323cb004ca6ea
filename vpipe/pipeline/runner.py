"""Running stages: resume, execute, record failures, report.

An item is up to date when the journal holds a record for its key made under its
current fingerprint, whether that record is a success or a failure: a corrupt
video is not retried on every run, but replacing the file (which changes its
fingerprint) or ``retry_failed`` makes it run again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from vpipe.errors import StageError
from vpipe.pipeline.executor import Executor, InProcessExecutor
from vpipe.pipeline.failures import replace_stage_failures
from vpipe.pipeline.fingerprint import one_stat_per_file
from vpipe.pipeline.journal import Journal, Record
from vpipe.pipeline.progress import progress as track
from vpipe.pipeline.reasons import why_stale
from vpipe.pipeline.stage import Stage, StageReport, valid_records

__all__ = ["dry_run", "run_stage", "run_stages", "stage_status", "stages_status", "valid_records"]

log = logging.getLogger(__name__)


def stage_status(stage: Stage) -> StageReport:
    """What is done and failed, and why items are stale, without running anything."""
    try:
        states = stage.item_states()
        why = why_stale(stage) if states.count("stale") else ""
    except StageError as error:
        return StageReport(stage=stage.label, ready=False, reason=str(error), artifact=_artifact(stage))
    damaged_items = stage.damaged_items()
    done = set(states.keys_in("done")) if damaged_items else ()
    damaged = [key for key in damaged_items if key in done]
    done_count = states.count("done")
    return StageReport(
        stage=stage.label,
        total=len(states.keys),
        done=done_count - len(damaged),
        failed=states.count("failed"),
        damaged=len(damaged),
        stale=states.count("stale"),
        new=states.count("new"),
        why=why,
        artifact=_artifact(stage),
    )


def _artifact(stage: Stage) -> str:
    """The artifact's path for a report; empty when even naming it needs inputs that are missing."""
    try:
        return str(stage.artifact)
    except StageError:
        return ""


def run_stage(
    stage: Stage,
    executor: Executor,
    *,
    progress: bool = True,
    retry_failed: bool = False,
) -> StageReport:
    """Bring one stage's artifact up to date; never raises for a failed item.

    ``progress=False`` silences this stage's progress; otherwise the process-wide
    defaults of :mod:`vpipe.pipeline.progress` apply (bars, log lines or quiet).
    """
    started = time.perf_counter()
    items = stage.items()
    journal = Journal(stage.journal_dir)
    journal.merge()
    records = journal.load()
    current = stage.current_records(items, records)
    for key, reason in stage.damaged_items().items():
        if key in current and current[key].ok:
            log.warning("%s: recomputing %s: its stored output is damaged (%s)", stage.label, key, reason)
            del current[key]
    todo = [item for item in items if item.key not in current or (retry_failed and not current[item.key].ok)]
    if todo:
        runner = InProcessExecutor() if stage.in_process else executor
        with track(stage.label, len(todo), quiet=None if progress else True) as tracker:
            try:
                outcomes = runner.map(
                    stage.item_fn(),
                    todo,
                    stage=stage.label,
                    resources=stage.resources,
                    chunk_size=stage.chunk_size,
                    batched=stage.batched,
                )
                for outcome in outcomes:
                    record = Record(
                        key=outcome.item.key,
                        fingerprint=outcome.item.fingerprint,
                        ok=outcome.ok,
                        rows=outcome.rows or [],
                        error=outcome.error,
                        path=outcome.item.path,
                        seconds=outcome.seconds,
                    )
                    journal.append(record)
                    if not outcome.ok:
                        tracker.note(f"{stage.label}: {outcome.item.key}: {outcome.error}")
                    tracker.advance(failed=int(not outcome.ok))
            finally:
                journal.flush()
        records = journal.load()
        current = stage.current_records(items, records)

    artifact_fp = stage.artifact_fingerprint(items)
    target = stage.output()
    if todo or not target.complete(artifact_fp):
        stage.write_artifact(items, current, artifact_fp)
        target.mark(artifact_fp, stage.components())
        replace_stage_failures(
            stage.workspace.failures_path,
            stage.label,
            [
                {"stage": stage.label, "video_id": r.key, "path": r.path, "error": r.error, "time": r.time}
                for r in current.values()
                if not r.ok
            ],
        )
        journal.compact(records)
    elif "components" not in target.recorded():  # made before reasons were recorded: record them now
        target.mark(artifact_fp, stage.components())
    failed = sum(not r.ok for r in current.values())
    return StageReport(
        stage=stage.label,
        total=len(items),
        done=len(current) - failed,
        failed=failed,
        computed=len(todo),
        up_to_date=len(items) - len(todo),
        seconds=time.perf_counter() - started,
        artifact=str(stage.artifact),
        details=stage.details(),
    )



def run_stages(
    stages: Sequence[Stage],
    executor: Executor,
    *,
    gpu_executor: Executor | None = None,
    progress: bool = True,
    retry_failed: bool = False,
) -> list[StageReport]:
    """Run every stage in the order given; stages asking for a GPU use ``gpu_executor`` when given."""
    reports = []
    for stage in stages:
        wants_gpu = bool(stage.resources and "GPU" in stage.resources)
        chosen = gpu_executor if wants_gpu and gpu_executor is not None else executor
        reports.append(run_stage(stage, chosen, progress=progress, retry_failed=retry_failed))
    return reports


def stages_status(stages: Sequence[Stage]) -> list[StageReport]:
    """Every stage's report, from one snapshot of the source files (see :func:`one_stat_per_file`)."""
    with one_stat_per_file():
        return [stage_status(stage) for stage in stages]


def dry_run(stages: Sequence[Stage], *, retry_failed: bool = False) -> list[StageReport]:
    """What :func:`run_stages` would do to ``stages``, in order, without doing it.

    Each stage is judged on the inputs on disk, unless a stage before it in this run will
    (re)make one of them first: then it runs after that stage, whatever its inputs say now
    (evaluate on a workspace whose runs are stale runs after train, not "not ready"), and
    its report names those stages in :attr:`StageReport.after`. A stage is (re)made when it
    has stale, new or damaged items, failed ones with ``retry_failed``, or itself runs
    after another.
    """
    by_name = {stage.journal_name: stage for stage in stages}
    remade: set[str] = set()
    reports = []
    with one_stat_per_file():
        for stage in stages:
            report = stage_status(stage)
            upstream = {required.journal_name for required in stage.requires()} & remade
            if upstream:
                if not report.ready:
                    report = StageReport(stage=stage.label, artifact=report.artifact)
                report.after = [by_name[name].label for name in by_name if name in upstream]
            works = report.ready and bool(report.stale or report.new or report.damaged or (retry_failed and report.failed))
            if upstream or works:
                remade.add(stage.journal_name)
            reports.append(report)
    return reports
