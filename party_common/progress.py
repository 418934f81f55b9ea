"""A job's progress for people: the current stage in plain words with an estimate of the time left, and a
history of its stages (``progress`` events in the job store's audit log: `bank-node logs`, `wait`).

The protocols report ``(stage, done, total)``; training stages are "epoch E/N ...", which is what the
estimate reads: the share of epochs done so far, against the time since the first epoch began.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

EPOCH = re.compile(r"^epoch (\d+)/(\d+)")
AHEAD = "(masks ahead of time)"


def epoch_fraction(stage: str, done: int, total: int) -> float | None:
    """The share of a training's epochs done at ``stage`` (None for stages outside the epochs)."""
    m = EPOCH.match(stage)
    if not m:
        return None
    epoch, epochs = int(m.group(1)), int(m.group(2))
    if epochs < 1:
        return None
    within = 0.0 if AHEAD in stage or total <= 0 else min(1.0, done / total)
    return min(1.0, (epoch - 1 + within) / epochs)


def duration(seconds: float) -> str:
    """``seconds`` as people say it: "45 s", "3 min 20 s", "1 h 05 min"."""
    s = int(round(max(0.0, seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def describe(stage: str, done: int, total: int) -> str:
    """"keys", "epoch 2/8: batch 5 of 10", "psi.exchange: 3 of 7"."""
    if total <= 1:
        return stage
    unit = "batch " if EPOCH.match(stage) and AHEAD not in stage else ""
    return f"{stage}: {unit}{done} of {total}"


class ProgressLog:
    """Turns ``(stage, done, total)`` calls into the job's progress text (throttled) and stage events."""

    def __init__(self, write: Callable[[str], None], event: Callable[[str], None], *, every_s: float = 0.5,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._write, self._event, self._every, self._clock = write, event, every_s, clock
        self._last_write = float("-inf")
        self._stage: str | None = None
        self._start: float | None = None  # when the first epoch began

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self._clock()
        fraction = epoch_fraction(stage, done, total)
        if fraction is not None and self._start is None:
            self._start = now
        left = ""
        if fraction is not None and self._start is not None and 0 < fraction < 1 and now > self._start:
            left = f"; about {duration((now - self._start) * (1 - fraction) / fraction)} left"
        changed = stage != self._stage
        if changed:
            self._stage = stage
            self._event(stage + left)
        if changed or now - self._last_write > self._every or done >= total:
            self._last_write = now
            self._write(describe(stage, done, total) + left)


__all__ = ["ProgressLog", "describe", "duration", "epoch_fraction"]
