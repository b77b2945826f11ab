"""Every measurement of one backend, in order, gathered into ``BackendResults``.

(a) and (b) alternate in short rounds (floor, store, floor, store, ... of about
``ROUND_S`` each) on two fresh objects, after one warm-up each, so that drift of the
machine or the database (WAL growth, checkpoints, other work on a shared machine) falls on
both alike; each side's samples are pooled. They get ``SINGLE_WRITER_FACTOR`` times the
measuring time of the other loads, because their ratio is a target and the machine is
shared; the ratio of each round pair is kept too, to show how stable the pooled one is.

Then the multi-process loads: (c) steady, (d) flat out on one object, (e) flat out on one
object per writer, and the steady sweep over 1, 2, 4 and 8 writers (16 is (c) itself).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from bench.floor import Floor, open_floor
from bench.loads import (
    SWEEP_WRITERS,
    delete_objects,
    flat_out_shared,
    flat_out_spread,
    run_load,
    steady,
)
from bench.objects import bench_sandbox
from bench.postgres_server import postgres_url
from bench.stats import LoadResult, LoadSpec, SingleWriterResult
from bench.workloads import Samples, Timing, floor_single_writer, store_single_writer
from shellgate.store import RetryPolicy, Store, connect

BACKENDS = ("sqlite", "postgres")
ROUND_S = 0.5
SINGLE_WRITER_FACTOR = 2
STEADY_WRITERS = 16

Progress = Callable[[str], None]


@dataclass(slots=True)
class BackendResults:
    backend: str
    engine_version: str
    settings: dict[str, str]
    retry: RetryPolicy
    store: SingleWriterResult  # (a)
    floor: SingleWriterResult  # (b)
    round_ratios: list[float] = field(default_factory=list)  # (a)/(b) of each round pair
    loads: dict[str, LoadResult] = field(default_factory=dict)  # "c", "d", "e"
    sweep: list[LoadResult] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        """(a)/(b) in operations per second."""
        return self.store.ops_per_s / self.floor.ops_per_s if self.floor.ops_per_s else 0.0


@contextlib.contextmanager
def database_url(backend: str) -> Iterator[str]:
    """A database for ``backend``: a SQLite file in a temporary directory, or Postgres."""
    if backend == "postgres":
        with postgres_url() as url:
            yield url
        return
    if backend != "sqlite":
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    with tempfile.TemporaryDirectory(prefix="shellgate-bench-sqlite-") as directory:
        yield f"sqlite:///{Path(directory) / 'bench.db'}"


async def run_backend(
    backend: str,
    url: str,
    timing: Timing,
    pool: Executor,
    progress: Progress,
    retry: RetryPolicy,
) -> BackendResults:
    store = await connect(url, retry=retry)
    floor = await open_floor(url)
    try:
        store_result, floor_result, round_ratios = await measure_single_writer(store, floor, timing)
        results = BackendResults(
            backend=backend,
            engine_version=await floor.engine_version(),
            settings=await floor.settings(),
            retry=retry,
            store=store_result,
            floor=floor_result,
            round_ratios=round_ratios,
        )
        progress(
            f"{backend}: (a) {store_result.ops_per_s:,.0f} ops/s, "
            f"(b) {floor_result.ops_per_s:,.0f} ops/s, (a)/(b) = {results.ratio:.2f}"
        )
        await measure_loads(results, store, url, timing, pool, progress)
    finally:
        await floor.close()
        await store.close()
    return results


async def measure_single_writer(
    store: Store, floor: Floor, timing: Timing
) -> tuple[SingleWriterResult, SingleWriterResult, list[float]]:
    """(a) and (b), alternating rounds; returns (store, floor, per-round ratios)."""
    store_id = (await store.create_message(bench_sandbox())).metadata.id
    floor_id = (await store.create_message(bench_sandbox())).metadata.id
    rounds = single_writer_rounds(timing)
    per_round = Timing(warmup=0.0, duration=single_writer_seconds(timing) / rounds)
    warm_up = Timing(warmup=timing.warmup, duration=0.0)
    await floor_single_writer(floor, floor_id, warm_up)
    await store_single_writer(store, store_id, warm_up)
    through_store, through_floor = Samples(), Samples()
    ratios = []
    for _ in range(rounds):
        floor_round = await floor_single_writer(floor, floor_id, per_round)
        store_round = await store_single_writer(store, store_id, per_round)
        through_floor.extend(floor_round)
        through_store.extend(store_round)
        ratios.append(store_round.result().ops_per_s / floor_round.result().ops_per_s)
    await delete_objects(store, [store_id, floor_id])
    return through_store.result(), through_floor.result(), ratios


def single_writer_seconds(timing: Timing) -> float:
    return SINGLE_WRITER_FACTOR * timing.duration


def single_writer_rounds(timing: Timing) -> int:
    return max(2, round(single_writer_seconds(timing) / ROUND_S))


async def measure_loads(
    results: BackendResults,
    store: Store,
    url: str,
    timing: Timing,
    pool: Executor,
    progress: Progress,
) -> None:
    async def measure(spec: LoadSpec) -> LoadResult:
        result = await run_load(store, url, spec, timing, pool)
        progress(
            f"{results.backend}: {spec.name}: {result.goodput:,.0f} ok/s, "
            f"{result.conflicts_per_s:,.0f} conflicts/s, {result.exhausted} exhausted, "
            f"p99 {result.latency.p99_ms:.1f} ms, lost {result.lost}"
        )
        return result

    results.loads["c"] = await measure(steady(STEADY_WRITERS, "(c) steady, 1 object"))
    results.loads["d"] = await measure(flat_out_shared(STEADY_WRITERS))
    results.loads["e"] = await measure(flat_out_spread(STEADY_WRITERS))
    for writers in SWEEP_WRITERS:
        if writers == STEADY_WRITERS:
            results.sweep.append(results.loads["c"])
        else:
            results.sweep.append(await measure(steady(writers)))
