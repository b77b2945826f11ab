"""Latency percentiles and the result records every workload returns.

Percentiles use the nearest-rank method on the raw samples (no histogram buckets, no
interpolation): p99 of 1,000 calls is the 990th fastest call.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True, slots=True)
class Latency:
    """p50 and p99 in milliseconds."""

    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, seconds: Iterable[float]) -> Latency:
        ordered = sorted(seconds)
        return cls(percentile(ordered, 50) * 1000.0, percentile(ordered, 99) * 1000.0)


@dataclass(frozen=True, slots=True)
class SingleWriterResult:
    """One writer in a closed loop: (a) through the store, (b) through the driver."""

    calls: int
    seconds: float
    latency: Latency

    @property
    def ops_per_s(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


@dataclass(frozen=True, slots=True)
class LoadSpec:
    """A multi-writer load: who writes, where from, to what, how often.

    ``rate`` is updates per second per writer on an open-loop schedule; None means a
    closed loop (each writer calls again as soon as its previous call returned).
    ``shared_object`` puts every writer on one object; otherwise each writer has its own.
    """

    name: str
    writers: int
    processes: int
    shared_object: bool
    rate: float | None

    @property
    def objects(self) -> int:
        return 1 if self.shared_object else self.writers

    @property
    def offered_per_s(self) -> float | None:
        return None if self.rate is None else self.rate * self.writers


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What a multi-writer load measured inside its window, plus the lost-update check.

    ``expected`` is the number of calls that returned successfully during the whole run
    (warm-up and drain included) and ``final`` the sum of the counters read back afterwards;
    every successful call incremented a counter once, so ``expected - final`` updates were lost.
    """

    spec: LoadSpec
    seconds: float
    successes: int
    exhausted: int
    errors: int
    conflicts: int
    missed_slots: int
    latency: Latency
    expected: int
    final: int
    first_error: str | None = None

    @property
    def calls(self) -> int:
        return self.successes + self.exhausted + self.errors

    @property
    def goodput(self) -> float:
        return self.successes / self.seconds

    @property
    def conflicts_per_s(self) -> float:
        return self.conflicts / self.seconds

    @property
    def exhausted_pct(self) -> float:
        return 100.0 * self.exhausted / self.calls if self.calls else 0.0

    @property
    def lost(self) -> int:
        return self.expected - self.final
