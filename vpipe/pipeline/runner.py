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
from vpipe.pipeline.executor import Executor, InProcessExecutor, WorkItem
from vpipe.pipeline.failures import replace_stage_failures
from vpipe.pipeline.item_state import stage_item_states
from vpipe.pipeline.journal import Journal, Record
from vpipe.pipeline.progress import progress as track
from vpipe.pipeline.stage import Stage, StageReport

log = logging.getLogger(__name__)


def valid_records(items: Sequence[WorkItem], records: dict[str, Record]) -> dict[str, Record]:
    """The records that still describe ``items`` as they are now."""
    return {
        item.key: records[item.key]
        for item in items
        if item.key in records and records[item.key].fingerprint == item.fingerprint
    }


def stage_status(stage: Stage) -> StageReport:
    """What is done and failed, without running anything."""
    try:
        keys, fingerprints = stage.item_fingerprints()
    except StageError as error:
        return StageReport(stage=stage.label, ready=False, reason=str(error), artifact=str(stage.artifact))
    states = stage_item_states(keys, fingerprints, stage.journal_dir)
    damaged_items = stage.damaged_items()
    done = set(states.keys_in("done")) if damaged_items else ()
    damaged = [key for key in damaged_items if key in done]
    done_count = states.count("done")
    return StageReport(
        stage=stage.label,
        total=len(keys),
        done=done_count - len(damaged),
        failed=states.count("failed"),
        damaged=len(damaged),
        stale=states.count("stale"),
        new=states.count("new"),
        artifact=str(stage.artifact),
    )


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
    current = valid_records(items, records)
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
        current = valid_records(items, records)

    artifact_fp = stage.artifact_fingerprint(items)
    if todo or not stage.artifact_is_current(artifact_fp):
        stage.write_artifact(items, current, artifact_fp)
        stage.mark_artifact(artifact_fp)
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
    )

