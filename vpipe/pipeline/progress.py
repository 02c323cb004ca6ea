"""Progress of long loops: bars on a terminal, periodic log lines everywhere else.

Batch jobs on a cluster write stderr to a log file, where a progress bar shows
nothing at all; there the same tracker writes one timestamped line per loop every
``log_every`` seconds (done/total, failures, rate, ETA) and a summary line at the
end, which is what a SLURM log needs to tell a slow job from a stuck one. On a
terminal it draws rich bars as before. Progress always goes to stderr, so
``--json`` output on stdout stays clean.

Usage::

    with progress("flow", total=len(videos)) as tracker:
        for video in videos:
            ...
            tracker.advance(failed=int(not ok))

The CLI sets the process-wide defaults once with :func:`configure` (``--log-every``,
``--quiet``); library code opens trackers without knowing about either.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

#: Seconds between two log lines when stderr is not a terminal.
DEFAULT_LOG_EVERY = 30.0


@dataclass
class _Defaults:
    log_every: float = DEFAULT_LOG_EVERY
    quiet: bool = False


_defaults = _Defaults()
_live_lock = threading.Lock()
_live: Progress | None = None
_live_users = 0


def configure(*, log_every: float | None = None, quiet: bool | None = None) -> None:
    """Set the process-wide defaults that trackers opened without arguments use."""
    if log_every is not None:
        if log_every <= 0:
            raise ValueError(f"log_every must be positive, got {log_every}")
        _defaults.log_every = float(log_every)
    if quiet is not None:
        _defaults.quiet = quiet


def defaults() -> tuple[float, bool]:
    """The current ``(log_every, quiet)`` defaults."""
    return _defaults.log_every, _defaults.quiet


def format_duration(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``5400`` -> ``1h30m``: short enough for a log line."""
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Tracker:
    """Counts of one loop; :meth:`advance` is safe to call from several threads."""

    def __init__(self, label: str, total: int, *, clock=time.monotonic):
        self.label = label
        self.total = total
        self.done = 0
        self.failed = 0
        self.status = ""
        self._clock = clock
        self._started = clock()
        self._lock = threading.Lock()
        self._bar: tuple[Progress, int] | None = None
        self._stream: TextIO = sys.stderr

    def advance(self, n: int = 1, failed: int = 0, status: str = "") -> None:
        """Count ``n`` finished items, ``failed`` of them failed; ``status`` is shown beside the counts."""
        with self._lock:
            self.done += n
            self.failed += failed
            if status:
                self.status = status
        if self._bar is not None:
            bar, task = self._bar
            bar.update(task, advance=n, description=self._description())

    def note(self, text: str) -> None:
        """A line about one item (a failure, say), shown even when quiet and never breaking a bar."""
        if self._bar is not None:
            self._bar[0].console.print(text, highlight=False, markup=False)
        else:
            self._stream.write(text + "\n")
            self._stream.flush()

    @property
    def elapsed(self) -> float:
        return self._clock() - self._started

    @property
    def rate(self) -> float:
        """Items per second since the loop started."""
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far; None before the first item finishes."""
        rate = self.rate
        return (self.total - self.done) / rate if rate > 0 else None

    def line(self) -> str:
        """One log line: ``flow: 120/13320 (0.9%), 2 failed, 3.10/s, ETA 1h10m``."""
        with self._lock:
            done, failed, status = self.done, self.failed, self.status
        share = f" ({100 * done / self.total:.1f}%)" if self.total else ""
        eta = self.eta
        text = (
            f"{self.label}: {done}/{self.total}{share}, {failed} failed, {_rate(self.rate)}, "
            f"elapsed {format_duration(self.elapsed)}, ETA {format_duration(eta) if eta is not None else '?'}"
        )
        return f"{text}, {status}" if status else text

    def summary(self, stopped: bool = False) -> str:
        """The closing line of a loop; ``stopped`` when it ended early (interrupted, or an error)."""
        return (
            f"{self.label}: {'stopped at' if stopped else 'finished'} {self.done}/{self.total}, {self.failed} failed "
            f"in {format_duration(self.elapsed)} ({_rate(self.rate)})"
        )

    def _description(self) -> str:
        parts = [self.label]
        if self.failed:
            parts.append(f"[yellow]{self.failed} failed[/]")
        if self.status:
            parts.append(self.status)
        return " ".join(parts)


def _rate(per_second: float) -> str:
    if per_second >= 1 or per_second == 0:
        return f"{per_second:.2f}/s"
    return f"{60 * per_second:.2f}/min"


@contextmanager
def progress(
    label: str,
    total: int,
    *,
    log_every: float | None = None,
    quiet: bool | None = None,
    stream: TextIO | None = None,
) -> Iterator[Tracker]:
    """Track a loop of ``total`` items: a bar on a terminal, log lines elsewhere.

    ``log_every`` and ``quiet`` default to the values set by :func:`configure`;
    ``stream`` defaults to ``sys.stderr`` as it is when the loop starts. Quiet
    trackers still count, so callers never branch on whether output is wanted.
    """
    every, silent = _defaults.log_every if log_every is None else log_every, _defaults.quiet if quiet is None else quiet
    out = sys.stderr if stream is None else stream
    tracker = Tracker(label, total)
    tracker._stream = out
    if silent:
        yield tracker
    elif _is_terminal(out):
        with _terminal_bar(tracker, out):
            yield tracker
    else:
        with _log_lines(tracker, out, every):
            yield tracker


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def _terminal_bar(tracker: Tracker, stream: TextIO) -> Iterator[None]:
    """One rich display per process, shared by nested trackers (rich allows only one live display)."""
    global _live, _live_users
    with _live_lock:
        if _live is None:
            _live = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(file=stream, soft_wrap=True),
                transient=True,
            )
            _live.start()
        _live_users += 1
        bar = _live
    task = bar.add_task(tracker.label, total=tracker.total)
    tracker._bar = (bar, task)
    try:
        yield
    finally:
        tracker._bar = None
        bar.remove_task(task)
        with _live_lock:
            _live_users -= 1
            if _live_users == 0:
                bar.stop()
                _live = None


@contextmanager
def _log_lines(tracker: Tracker, stream: TextIO, every: float) -> Iterator[None]:
    """A daemon thread writes a line every ``every`` seconds, even while no item finishes:
    a long task must not look like a hung job."""
    stop = threading.Event()

    def write(text: str) -> None:
        stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        stream.flush()

    def beat() -> None:
        while not stop.wait(every):
            write(tracker.line())

    thread = threading.Thread(target=beat, name=f"progress-{tracker.label}", daemon=True)
    thread.start()
    stopped = True
    try:
        yield
        stopped = False
    finally:
        stop.set()
        thread.join()
        write(tracker.summary(stopped=stopped))
