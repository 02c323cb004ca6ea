"""The order of a job's stages, derived from what each declares it reads.

Stages are identified by their state directory (:attr:`Stage.journal_name`): the
stage a declaration names may be another object built for the same artifact, and two
stages of one job never share one. The order is topological and stable: among the
stages whose requirements have all been placed, the one listed first comes next, so
a job lists its stages in the order it prefers and the declarations only ever move a
stage later, after what it reads. A stage that requires one outside the job (the
standalone ``vpipe extract`` reading an existing plan) finds its input on disk, or
says it is not ready.
"""

from __future__ import annotations

from collections.abc import Sequence

from vpipe.errors import ConfigError
from vpipe.pipeline.stage import Stage


def stage_order(stages: Sequence[Stage]) -> list[Stage]:
    """``stages`` in an order where each comes after every stage it requires."""
    position = {stage.journal_name: index for index, stage in enumerate(stages)}
    if len(position) != len(stages):
        names = [stage.journal_name for stage in stages]
        twice = sorted({name for name in names if names.count(name) > 1})
        raise ConfigError(f"two stages of this job make the same artifact: {', '.join(twice)}")
    needs = [
        {position[required.journal_name] for required in stage.requires() if required.journal_name in position}
        for stage in stages
    ]
    placed: list[int] = []
    waiting = list(range(len(stages)))
    while waiting:
        ready = next((index for index in waiting if needs[index] <= set(placed)), None)
        if ready is None:
            cycle = ", ".join(stages[index].label for index in waiting)
            raise ConfigError(f"the stages {cycle} require each other: no order runs them")
        placed.append(ready)
        waiting.remove(ready)
    return [stages[index] for index in placed]


def ancestors(stages: Sequence[Stage], chosen: Sequence[Stage]) -> list[Stage]:
    """``chosen`` and every stage of ``stages`` they require, directly or through others,
    in the order of ``stages``. A requirement outside ``stages`` is not followed: it is an
    input on disk."""
    by_name = {stage.journal_name: stage for stage in stages}
    keep: set[str] = set()
    waiting = [stage.journal_name for stage in chosen]
    while waiting:
        name = waiting.pop()
        if name in keep:
            continue
        keep.add(name)
        waiting += [required.journal_name for required in by_name[name].requires() if required.journal_name in by_name]
    return [stage for stage in stages if stage.journal_name in keep]


def select_stages(stages: Sequence[Stage], only: Sequence[str] | None = None, until: str | None = None) -> list[Stage]:
    """The stages ``--only`` and ``--until`` name, in run order; unknown names are an error.

    ``until`` keeps the stages it names and what they require, transitively, as ``make
    TARGET`` builds a target and its prerequisites: a stage earlier in the run order that
    the named one does not read is left out. ``only`` keeps the stages it names. Given
    both, a stage must pass both. Selection never reorders: a stage still reads what the
    stages before it made, and says it is not ready when that is missing.
    """
    names = [stage.label for stage in stages]

    def matches(name: str, wanted: str) -> bool:
        return name == wanted or name.split(":", 1)[0] == wanted

    for wanted in [*(only or []), *([until] if until else [])]:
        if not any(matches(name, wanted) for name in names):
            raise ConfigError(f"no stage named {wanted!r} in this run; its stages: {', '.join(names)}")
    kept = list(stages)
    if until:
        kept = ancestors(stages, [stage for stage, name in zip(stages, names) if matches(name, until)])
    if only:
        kept = [stage for stage in kept if any(matches(stage.label, wanted) for wanted in only)]
    return kept
