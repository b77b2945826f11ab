"""Side by side in one run: the physical floors, shellgate's store and its peers.

Every contender applies the same mutation to the same 220-byte sandbox: read, decode,
increment a counter, encode, compare-and-swap write. They run in interleaved rounds of
``round_s`` (contender 1, 2, ..., n, then again with the order rotated by one), so drift
of the machine (other people's work on a shared machine, WAL growth, checkpoints) falls on
all of them alike; each contender's figure is the median of its rounds, and each ratio is
taken per round (shellgate's rate in round *k* over its floor's in round *k*) and reported
as the median with its range.

* One writer: a closed loop on one object per contender.
* 16 writers: 16 tasks in one process, closed loops on one shared object per contender,
  each call with the retry rule (5 attempts, full jitter); the counter read back at the end
  must equal the successful calls (nothing acknowledged lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from bench.etcd_server import INSTALL_HINT, EtcdServer
from bench.floor import FEEDS, Floor, PostgresFloor, open_floor
from bench.objects import Sandbox, bench_sandbox, increment
from bench.peers import EtcdPeer, Peer, PeerExhausted, SqlAlchemyPeer
from bench.stats import Latency
from bench.workloads import Samples, Timing, closed_loop
from shellgate.store import Conflict, RetryPolicy, Store, connect
from shellgate.store.observer import CasResult

WRITERS = 16
PEERS_HINT = "pip install -e '.[bench]', as `make bench` does"

OnConflict = Callable[[], None]
Update = Callable[[str, OnConflict], Awaitable[object]]


class Exhausted(Exception):
    """A call ran out of attempts (each contender's own exception is mapped to this)."""


@dataclass(slots=True)
class Contender:
    backend: str  # "sqlite", "postgres" or "etcd"
    role: str  # "floor", "floor + change-feed trigger", "shellgate", "peer"
    label: str
    update: Update  # one call on an object; raises Exhausted when it ran out of attempts
    create: Callable[[], Awaitable[str]]
    counter: Callable[[str], Awaitable[int]] | None = None  # None: not in the 16-writer runs

    @property
    def key(self) -> str:
        return f"{self.backend}: {self.label}"


@dataclass(slots=True)
class SingleWriter:
    contender: Contender
    rounds: list[Samples] = field(default_factory=list)

    def rates(self) -> list[float]:
        return [r.result().ops_per_s for r in self.rounds]

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rates()) if self.rounds else 0.0

    def latency(self) -> Latency:
        return Latency.of(x for r in self.rounds for x in r.latencies)


@dataclass(slots=True)
class WritersRound:
    seconds: float
    successes: int = 0
    exhausted: int = 0
    errors: int = 0
    conflicts: int = 0
    first_error: str | None = None

    @property
    def goodput(self) -> float:
        return self.successes / self.seconds if self.seconds else 0.0


@dataclass(slots=True)
class ManyWriters:
    contender: Contender
    rounds: list[WritersRound] = field(default_factory=list)
    expected: int = 0  # successful calls over the whole run
    final: int = 0  # the counter's increase, read back

    @property
    def lost(self) -> int:
        return self.expected - self.final

    @property
    def median_goodput(self) -> float:
        return statistics.median(r.goodput for r in self.rounds) if self.rounds else 0.0

    def total(self, name: str) -> int:
        return sum(getattr(r, name) for r in self.rounds)

    @property
    def first_error(self) -> str | None:
        return next((r.first_error for r in self.rounds if r.first_error), None)


@dataclass(slots=True)
class Comparison:
    single: list[SingleWriter]
    many: list[ManyWriters]
    rounds: int
    round_s: float
    load_samples: list[float]  # the 1-minute load average, once per round
    skipped: list[str] = field(default_factory=list)  # "etcd: why", shown as rows

    def single_of(self, backend: str, role: str) -> SingleWriter | None:
        return next(
            (s for s in self.single if s.contender.backend == backend and s.contender.role == role),
            None,
        )

    def many_of(self, backend: str, role: str) -> ManyWriters | None:
        return next(
            (m for m in self.many if m.contender.backend == backend and m.contender.role == role),
            None,
        )


def ratios(top: SingleWriter, bottom: SingleWriter) -> list[float]:
    """``top``'s rate over ``bottom``'s, round by round."""
    return [t / b for t, b in zip(top.rates(), bottom.rates(), strict=True) if b]


# ----- contenders ---------------------------------------------------------------------------


class CountingObserver:
    """Counts lost CAS attempts of a store (a ``StoreObserver``)."""

    def __init__(self) -> None:
        self.conflicts = 0

    def cas_attempt(self, object_type: str, result: CasResult) -> None:
        if result == "conflict":
            self.conflicts += 1

    def cas_call(self, object_type: str, attempts: int, exhausted: bool) -> None:
        return None

    def operation(
        self, backend: str, operation: str, seconds: float, available: bool | None
    ) -> None:
        return None


def shellgate_contender(backend: str, store: Store, observer: CountingObserver) -> Contender:
    async def update(object_id: str, on_conflict: OnConflict) -> object:
        before = observer.conflicts
        try:
            return await store.update_message_cas(Sandbox, object_id, increment)
        except Conflict:
            raise Exhausted(object_id) from None
        finally:
            for _ in range(observer.conflicts - before):
                on_conflict()

    async def create() -> str:
        return (await store.create_message(bench_sandbox())).metadata.id

    async def counter(object_id: str) -> int:
        message = await store.get_message(Sandbox, object_id)
        assert message is not None
        return int(message.status.current_policy_version)

    return Contender(
        backend, "shellgate", "shellgate `update_message_cas`", update, create, counter
    )


# ----- running ------------------------------------------------------------------------------


def _rotated(items: Sequence[Contender], by: int) -> list[Contender]:
    by %= max(1, len(items))
    return [*items[by:], *items[:by]]


def _ignore() -> None:
    return None


async def measure_single(
    contenders: Sequence[Contender], rounds: int, round_s: float, warmup: float, loads: list[float]
) -> list[SingleWriter]:
    objects = {c.key: await c.create() for c in contenders}
    results = {c.key: SingleWriter(c) for c in contenders}
    for contender in contenders:
        await closed_loop(_one(contender, objects[contender.key]), Timing(warmup, 0.0))
    for number in range(rounds):
        loads.append(os.getloadavg()[0])
        for contender in _rotated(contenders, number):
            samples = await closed_loop(
                _one(contender, objects[contender.key]), Timing(0.0, round_s)
            )
            results[contender.key].rounds.append(samples)
    return [results[c.key] for c in contenders]


def _one(contender: Contender, object_id: str) -> Callable[[], Awaitable[object]]:
    return lambda: contender.update(object_id, _ignore)


async def measure_many(
    contenders: Sequence[Contender], rounds: int, round_s: float, loads: list[float]
) -> list[ManyWriters]:
    taking_part = [c for c in contenders if c.counter is not None]
    objects = {c.key: await c.create() for c in taking_part}
    results = {c.key: ManyWriters(c) for c in taking_part}
    start = {c.key: await _count(c, objects[c.key]) for c in taking_part}
    for number in range(rounds):
        loads.append(os.getloadavg()[0])
        for contender in _rotated(taking_part, number):
            outcome = await _writers_round(contender, objects[contender.key], round_s)
            result = results[contender.key]
            result.rounds.append(outcome)
            result.expected += outcome.successes
    for contender in taking_part:
        result = results[contender.key]
        result.final = await _count(contender, objects[contender.key]) - start[contender.key]
    return [results[c.key] for c in taking_part]


async def _count(contender: Contender, object_id: str) -> int:
    assert contender.counter is not None
    return await contender.counter(object_id)


async def _writers_round(contender: Contender, object_id: str, round_s: float) -> WritersRound:
    """``WRITERS`` tasks calling back to back for ``round_s``; calls started in time count."""
    outcome = WritersRound(seconds=round_s)

    def conflict() -> None:
        outcome.conflicts += 1

    began = time.perf_counter()
    until = began + round_s

    async def writer() -> None:
        while time.perf_counter() < until:
            try:
                await contender.update(object_id, conflict)
            except Exhausted:
                outcome.exhausted += 1
            except Exception as exc:  # counted and shown: a benchmark must not stop here
                outcome.errors += 1
                outcome.first_error = outcome.first_error or f"{type(exc).__name__}: {exc}"
            else:
                outcome.successes += 1

    await asyncio.gather(*(writer() for _ in range(WRITERS)))
    outcome.seconds = time.perf_counter() - began
    return outcome


# ----- the run ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    rounds: int
    round_s: float
    warmup: float
    many_rounds: int


async def run_comparison(
    urls: dict[str, str],
    etcd: EtcdServer | None,
    retry: RetryPolicy,
    plan: Plan,
    progress: Callable[[str], None],
) -> Comparison:
    """Open every contender on ``urls`` (backend -> URL) and ``etcd``, measure, close."""
    async with contextlib.AsyncExitStack() as stack:
        contenders: list[Contender] = []
        skipped = []
        for backend, url in urls.items():
            contenders += await _backend_contenders(backend, url, retry, stack)
            if not installed("sqlalchemy"):
                skipped.append(f"{backend}: SQLAlchemy skipped: not installed ({PEERS_HINT})")
        if etcd is None:
            skipped.append(f"etcd: skipped: etcd not installed ({INSTALL_HINT})")
        elif not installed("aetcd"):
            skipped.append(f"etcd: skipped: the aetcd client is not installed ({PEERS_HINT})")
        else:
            peer = await EtcdPeer.open(etcd.host, etcd.port, retry)
            stack.push_async_callback(peer.close)
            contenders.append(_peer_contender("etcd", peer, f"{peer.name}, etcd {etcd.version}"))
        loads: list[float] = []
        progress(f"one writer: {len(contenders)} loops, {plan.rounds} rounds of {plan.round_s} s")
        single = await measure_single(contenders, plan.rounds, plan.round_s, plan.warmup, loads)
        progress(f"{WRITERS} writers on one object: {plan.many_rounds} rounds")
        many = await measure_many(contenders, plan.many_rounds, plan.round_s, loads)
    return Comparison(single, many, plan.rounds, plan.round_s, loads, skipped)


async def _backend_contenders(
    backend: str, url: str, retry: RetryPolicy, stack: contextlib.AsyncExitStack
) -> list[Contender]:
    observer = CountingObserver()
    store = await connect(url, retry=retry, observer=observer)
    stack.push_async_callback(store.close)
    shellgate = shellgate_contender(backend, store, observer)
    feeds = FEEDS if backend == "postgres" else ("none",)
    floors = [await open_floor(url, feed=feed) for feed in feeds]
    for floor in floors:
        stack.push_async_callback(floor.close)
    found = [*(_floor_contender(backend, floor, store) for floor in floors), shellgate]
    if installed("sqlalchemy"):
        peer = await SqlAlchemyPeer.open(url, retry)
        stack.push_async_callback(peer.close)
        found.append(_peer_contender(backend, peer, peer.name))
    return found


def installed(module: str) -> bool:
    """Whether an optional peer's package is importable (both are in the ``bench`` extra)."""
    return importlib.util.find_spec(module) is not None


FLOOR_LOOPS = {
    "none": ("floor", "floor: asyncpg, one connection, prepared, plain table"),
    "trigger": (
        "floor + NOTIFY trigger",
        "floor + the NOTIFY row trigger shellgate had until migration 006",
    ),
    "statement": (
        "floor + NOTIFY in the statement",
        "floor + pg_notify in the writing statement (shellgate's change feed now)",
    ),
}


def _floor_contender(backend: str, floor: Floor, store: Store) -> Contender:
    async def create() -> str:
        if isinstance(floor, PostgresFloor):
            return await floor.create_row()
        return (await store.create_message(bench_sandbox())).metadata.id

    async def update(object_id: str, _on_conflict: OnConflict) -> object:
        return await floor.update(object_id)

    if isinstance(floor, PostgresFloor):
        role, label = FLOOR_LOOPS[floor.feed]
    else:
        role, label = "floor", "floor: stdlib sqlite3, one connection, synchronous"
    return Contender(backend, role, label, update, create)


def _peer_contender(backend: str, peer: Peer, label: str) -> Contender:
    async def update(object_id: str, on_conflict: OnConflict) -> object:
        try:
            await peer.update(object_id, on_conflict)
        except PeerExhausted:
            raise Exhausted(object_id) from None
        return None

    return Contender(backend, "peer", label, update, peer.create, peer.counter)
