"""The workloads, as plain async functions one process runs.

* ``closed_loop`` drives one operation back to back: (a) ``update_message_cas`` through the
  store and (b) the driver-level floor (bench/floor.py) on one object, one writer.
* ``run_writer_group`` is what each of the benchmark's writer processes runs for (c), (d),
  (e) and the scaling sweep: one store (as one gateway replica would have), several writer
  tasks on it, each calling ``update_message_cas`` on its object on a schedule
  (bench/schedule.py), tallying what happened inside the measuring window.

Time: a run has a warm-up and then a measuring window. Calls that *start* inside the window
are measured; calls started before it (warm-up) or after it (none are started) are not, but
every successful call, warm-up included, counts toward the lost-update check. Processes agree
on the window through a wall-clock start instant, converted to each one's monotonic clock.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.floor import Floor
from bench.objects import Sandbox, increment
from bench.schedule import ClosedLoop, OpenLoop
from bench.stats import Latency, SingleWriterResult
from shellgate.store import Conflict, RetryPolicy, Store, StoreError, connect
from shellgate.store.observer import CasResult


@dataclass(frozen=True, slots=True)
class Timing:
    """How long to warm up and how long to measure, in seconds."""

    warmup: float
    duration: float


# ----- one writer, closed loop: (a) and (b) ------------------------------------------------


@dataclass(slots=True)
class Samples:
    """Raw call latencies (seconds) over ``seconds`` of measuring."""

    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def extend(self, other: Samples) -> None:
        self.latencies += other.latencies
        self.seconds += other.seconds

    def result(self) -> SingleWriterResult:
        return SingleWriterResult(len(self.latencies), self.seconds, Latency.of(self.latencies))


async def closed_loop(operation: Callable[[], Awaitable[object]], timing: Timing) -> Samples:
    """Run ``operation`` back to back: ``timing.warmup`` unmeasured, then ``timing.duration``."""
    clock = time.perf_counter
    warm_until = clock() + timing.warmup
    while clock() < warm_until:
        await operation()
    samples = Samples()
    began = clock()
    until = began + timing.duration
    while (started := clock()) < until:
        await operation()
        samples.latencies.append(clock() - started)
    samples.seconds = clock() - began
    return samples


async def store_single_writer(store: Store, object_id: str, timing: Timing) -> Samples:
    """(a): ``update_message_cas`` on one object, one writer."""
    return await closed_loop(
        lambda: store.update_message_cas(Sandbox, object_id, increment), timing
    )


async def floor_single_writer(floor: Floor, object_id: str, timing: Timing) -> Samples:
    """(b): the same read-then-CAS written directly against the driver."""
    return await closed_loop(lambda: floor.update(object_id), timing)


# ----- many writers per process: (c), (d), (e), sweep ------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """Monotonic instants: writers begin, measuring starts, measuring ends."""

    begin: float
    start: float
    end: float

    @classmethod
    def from_wall_clock(cls, start_at: float, timing: Timing) -> Window:
        begin = time.monotonic() + (start_at - time.time())
        start = begin + timing.warmup
        return cls(begin, start, start + timing.duration)

    def measures(self, instant: float) -> bool:
        return self.start <= instant < self.end


class WindowConflictCounter:
    """A ``StoreObserver`` counting attempt-level CAS conflicts inside the window."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.conflicts = 0

    def cas_attempt(self, object_type: str, result: CasResult) -> None:
        if result == "conflict" and self.window.measures(time.monotonic()):
            self.conflicts += 1

    def cas_call(self, object_type: str, attempts: int, exhausted: bool) -> None:
        return None

    def operation(
        self, backend: str, operation: str, seconds: float, available: bool | None
    ) -> None:
        return None


@dataclass(slots=True)
class Tally:
    """What the writers of one process saw. Picklable: it travels back to the parent.

    ``successes``, ``exhausted`` (Conflict after all attempts), ``errors`` (any other store
    error), ``missed`` slots, ``conflicts`` and ``latencies`` (every call, in seconds) cover
    the measuring window; ``committed`` counts successful calls per object over the whole run.
    """

    latencies: list[float] = field(default_factory=list)
    successes: int = 0
    exhausted: int = 0
    errors: int = 0
    missed: int = 0
    conflicts: int = 0
    committed: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None

    def record(
        self, object_id: str, outcome: str | Exception, seconds: float, *, measured: bool
    ) -> None:
        if outcome == "ok":
            self.committed[object_id] = self.committed.get(object_id, 0) + 1
        if isinstance(outcome, Exception) and self.first_error is None:
            self.first_error = f"{type(outcome).__name__}: {outcome}"
        if not measured:
            return
        self.latencies.append(seconds)
        if outcome == "ok":
            self.successes += 1
        elif outcome == "exhausted":
            self.exhausted += 1
        else:
            self.errors += 1

    def merge(self, other: Tally) -> None:
        self.latencies += other.latencies
        self.successes += other.successes
        self.exhausted += other.exhausted
        self.errors += other.errors
        self.missed += other.missed
        self.conflicts += other.conflicts
        for object_id, count in other.committed.items():
            self.committed[object_id] = self.committed.get(object_id, 0) + count
        self.first_error = self.first_error or other.first_error


@dataclass(frozen=True, slots=True)
class WriterPlan:
    object_id: str
    phase: float  # offset of the writer's first slot, seconds (open loop only)


@dataclass(frozen=True, slots=True)
class ProcessPlan:
    """Everything one writer process needs; picklable for the process pool.

    ``retry`` is pinned by the parent, so every process of a run retries alike even if
    ``RetryPolicy``'s defaults change on disk while the run is going on.
    """

    url: str
    writers: tuple[WriterPlan, ...]
    rate: float | None
    start_at: float  # wall clock (time.time()) at which writers begin
    timing: Timing
    retry: RetryPolicy


def writer_phase(rate: float | None, seed: int) -> float:
    """A reproducible uniform offset within one schedule interval."""
    return 0.0 if rate is None else random.Random(seed).uniform(0.0, 1.0 / rate)


def run_process(plan: ProcessPlan) -> Tally:
    """Process-pool entry point: run one process's writers to the end of the window."""
    return asyncio.run(run_writer_group(plan))


async def run_writer_group(plan: ProcessPlan) -> Tally:
    """Open one store, run every writer of ``plan`` on it concurrently, close it."""
    window = Window.from_wall_clock(plan.start_at, plan.timing)
    counter = WindowConflictCounter(window)
    store = await connect(plan.url, observer=counter, retry=plan.retry)
    tally = Tally()
    try:
        await asyncio.gather(
            *(run_writer(store, writer, plan.rate, window, tally) for writer in plan.writers)
        )
    finally:
        await store.close()
    tally.conflicts = counter.conflicts
    return tally


async def run_writer(
    store: Store, writer: WriterPlan, rate: float | None, window: Window, tally: Tally
) -> None:
    """Call ``update_message_cas`` on the writer's schedule until the window closes."""
    schedule = (
        ClosedLoop()
        if rate is None
        else OpenLoop(begin=window.begin, rate=rate, phase=writer.phase)
    )
    while True:
        call = schedule.next_call(time.monotonic())
        start = max(call.start, window.begin)
        if start >= window.end:
            return
        await _sleep_until(start)
        started = time.monotonic()
        measured = window.measures(started)
        if measured:
            tally.missed += call.missed
        outcome = await _one_call(store, writer.object_id)
        tally.record(writer.object_id, outcome, time.monotonic() - started, measured=measured)


async def _one_call(store: Store, object_id: str) -> str | Exception:
    try:
        await store.update_message_cas(Sandbox, object_id, increment)
    except Conflict:
        return "exhausted"
    except StoreError as exc:
        return exc
    return "ok"


async def _sleep_until(instant: float) -> None:
    delay = instant - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
