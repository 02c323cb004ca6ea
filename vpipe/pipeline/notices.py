"""Warnings of a run, shown once each, as log lines.

Per-item work runs in dask worker processes, where Python prints a warning in its
two-line ``file:line: UserWarning`` form with the source line echoed, once per
process: the main job printed the "no weights" warning once per worker per stream,
and a library's ConvergenceWarning once per fit. A batch job's log then holds the
same sentence many times, in a format unlike everything around it.

So a task records the warnings its items raise (:func:`recording`) and returns them
with its rows; the driver passes them, and its own warnings, to :func:`notice`, which
logs each distinct one once per run as ``time WARNING stage: message`` (the format of
the progress lines) and counts repeats; :func:`summarise` reports, at the end, how often
each library warning came back. Two warnings are the same when their category and text agree once numbers are
masked, so "failed to converge after 100 iterations" and "... 200 iterations" are one.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: What a task returns per distinct warning: (category name, message).
Raised = tuple[str, str]

log = logging.getLogger("vpipe.notices")

_lock = threading.Lock()
#: (category, masked message) -> [first message shown, times raised]
_seen: dict[tuple[str, str], list] = {}
_NUMBER = re.compile(r"\b\d+(\.\d+)?([eE][-+]?\d+)?\b")


@contextmanager
def recording() -> Iterator[list[Raised]]:
    """Collect, instead of printing, the distinct warnings raised inside the block.

    ``warnings.catch_warnings`` swaps process-wide state, so two worker threads
    recording at once may see each other's warnings; each is still reported once.
    """
    raised: list[Raised] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield raised
        finally:
            for item in caught:
                entry = (item.category.__name__, " ".join(str(item.message).split()))
                if entry not in raised:
                    raised.append(entry)


def notice(stage: str, raised: list[Raised]) -> None:
    """Log each warning not seen before in this run; count the others."""
    for category, message in raised:
        key = (category, _NUMBER.sub("#", message))
        with _lock:
            entry = _seen.setdefault(key, [message, 0])
            entry[1] += 1
            first = entry[1] == 1
        if first:
            log.warning("%s: %s", stage, _text(category, message))


def summarise() -> None:
    """One line per library warning (any category but a plain ``UserWarning``, which is
    vpipe's own and said everything the first time) that came back, with how often."""
    with _lock:
        repeated = [
            (category, first, count)
            for (category, _), (first, count) in _seen.items()
            if count > 1 and category != "UserWarning"
        ]
    for category, first, count in repeated:
        log.warning("run: %s (%d times in all)", _text(category, first), count)


def _text(category: str, message: str) -> str:
    return message if category == "UserWarning" else f"{category}: {message}"


def reset() -> None:
    """Forget what this run has shown: a new command starts a new run."""
    with _lock:
        _seen.clear()


class _CurrentStderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time, so lines land above a progress bar
    that has redirected it instead of through the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging must never break the run
            self.handleError(record)


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` of the driver: its own warnings take the same path."""
    notice("vpipe", [(category.__name__, " ".join(str(message).split()))])


def configure() -> None:
    """Route this process's warnings and the notices' log lines to stderr in the run format."""
    reset()
    if not any(isinstance(h, _CurrentStderr) for h in log.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.WARNING)
    warnings.showwarning = _show
    warnings.simplefilter("always", UserWarning)
