"""Why a stage's items are stale: the options and inputs that changed since its artifact was made.

A stage's marker keeps the components its fingerprint was made of (its options by name,
and each input's fingerprint as that input's stage recorded it; see
:meth:`vpipe.pipeline.stage.Stage.components`). Diffing them against today's names what
``vpipe run`` would redo the work for, before a long cluster job starts: ``need: 8 -> 6``,
``plan was rewritten``. When neither changed, the items' own inputs did (a video file
replaced): per-item inputs are not kept, so the reason says so without naming them.
"""

from __future__ import annotations

import json
from typing import Any

from vpipe.pipeline.stage import Stage


def flatten(options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested options as ``{"a.b": value}``, so a change names the innermost key."""
    flat: dict[str, Any] = {}
    for key, value in options.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _shown(value: Any) -> str:
    return "(unset)" if value is _UNSET else json.dumps(value, sort_keys=True, default=str)


_UNSET = object()


def changes(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """One phrase per changed option (``need: 8 -> 6``) or input (``plan was rewritten``)."""
    before, after = flatten(recorded.get("options") or {}), flatten(now.get("options") or {})
    phrases = [
        f"{name}: {_shown(before.get(name, _UNSET))} -> {_shown(after.get(name, _UNSET))}"
        for name in sorted(before.keys() | after.keys())
        if json.dumps(before.get(name), sort_keys=True, default=str) != json.dumps(after.get(name), sort_keys=True, default=str)
        or (name in before) != (name in after)
    ]
    inputs_before, inputs_after = recorded.get("inputs") or {}, now.get("inputs") or {}
    phrases += [f"{name} was rewritten" for name in inputs_after if inputs_before.get(name) != inputs_after[name]]
    return phrases


def why_stale(stage: Stage) -> str:
    """The reason a dry run prints beside a stage's stale count."""
    recorded = stage.output().recorded().get("components")
    if recorded is None:
        return "an input or option changed; which is not recorded for an artifact this old"
    return "; ".join(changes(recorded, stage.components())) or "input files changed"
