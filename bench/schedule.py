"""When each writer starts its next call: an open-loop schedule or a closed loop.

Open loop (the steady loads): writer *w* owns the time slots ``begin + phase_w + k / rate``
for k = 0, 1, 2, ...; ``phase_w`` is drawn uniformly from one interval (seeded), so
independent clients are not artificially in lockstep nor artificially interleaved. A call
starts at its slot, whatever happened to the calls of other writers. When a call overruns
and the next slot has already passed, the writer does **not** burst to catch up: it starts
at once for the most recent slot that has passed and drops the older ones, counting them as
*missed*. So a writer never runs more than one call at a time, never exceeds its rate, and a
slow database shows up as missed slots and a goodput below the offered load, not as a queue.

Closed loop (the "as fast as they can" loads): the next call starts as soon as the previous
one returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(slots=True)
class NextCall:
    start: float
    missed: int


class ClosedLoop:
    def next_call(self, now: float) -> NextCall:
        return NextCall(start=now, missed=0)


class OpenLoop:
    def __init__(self, *, begin: float, rate: float, phase: float) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        self._first = begin + phase
        self._interval = 1.0 / rate
        self._slot = 0  # index of the next slot not yet used

    def next_call(self, now: float) -> NextCall:
        """The next slot to run; slots that passed before the most recent one are missed."""
        due = self._first + self._slot * self._interval
        missed = 0
        if due < now:
            latest_passed = math.floor((now - self._first) / self._interval)
            missed = max(0, latest_passed - self._slot)
            self._slot = latest_passed
            due = now
        self._slot += 1
        return NextCall(start=due, missed=missed)
