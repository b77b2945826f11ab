"""Multi-process loads: spread writers over processes, start them together, add up.

The parent creates the objects, hands each worker process a ``ProcessPlan`` (its writers,
their objects and schedule phases, a common wall-clock start a moment ahead), waits for
their tallies, reads the counters back and deletes the objects. The pool of worker
processes is started once (spawn, so no event loop or connection leaks into a child) and
reused by every load of the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor

from bench.objects import Sandbox, bench_sandbox
from bench.stats import Latency, LoadResult, LoadSpec
from bench.workloads import ProcessPlan, Tally, Timing, WriterPlan, run_process, writer_phase
from shellgate.store import RetryPolicy, Store, object_type_of

MAX_PROCESSES = 4
STEADY_RATE = 20.0  # updates per second per writer in the steady loads
START_DELAY_S = 1.0  # time for every process to open its store before writers begin
SWEEP_WRITERS = (1, 2, 4, 8, 16)


def steady(writers: int, name: str = "") -> LoadSpec:
    """(c) and the sweep: ``writers`` on one object at ``STEADY_RATE`` each."""
    return LoadSpec(
        name or f"steady x{writers}",
        writers,
        min(writers, MAX_PROCESSES),
        shared_object=True,
        rate=STEADY_RATE,
    )


def flat_out_shared(writers: int = 16) -> LoadSpec:
    """(d): writers on one object, closed loop."""
    return LoadSpec("(d) flat out, 1 object", writers, MAX_PROCESSES, True, None)


def flat_out_spread(writers: int = 16) -> LoadSpec:
    """(e): writers on one object each, closed loop."""
    return LoadSpec(f"(e) flat out, {writers} objects", writers, MAX_PROCESSES, False, None)


@contextlib.contextmanager
def process_pool(processes: int = MAX_PROCESSES) -> Iterator[Executor]:
    """Spawned worker processes, started (and their imports done) before the first load."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context) as pool:
        list(pool.map(_warm_up, [0.3] * processes))
        yield pool


def _warm_up(pause: float) -> None:
    time.sleep(pause)  # keeps each worker busy so that every one of them gets started


def plan_processes(
    spec: LoadSpec,
    url: str,
    object_ids: Sequence[str],
    timing: Timing,
    start_at: float,
    retry: RetryPolicy,
) -> list[ProcessPlan]:
    """Writers round-robin over ``spec.processes`` processes; writer w writes object w or 0."""
    per_process: list[list[WriterPlan]] = [[] for _ in range(spec.processes)]
    for w in range(spec.writers):
        object_id = object_ids[0] if spec.shared_object else object_ids[w]
        per_process[w % spec.processes].append(WriterPlan(object_id, writer_phase(spec.rate, w)))
    return [
        ProcessPlan(url, tuple(writers), spec.rate, start_at, timing, retry)
        for writers in per_process
    ]


async def run_load(
    store: Store, url: str, spec: LoadSpec, timing: Timing, pool: Executor
) -> LoadResult:
    """Run ``spec`` against the database at ``url``; ``store`` (the parent's) sets up, and
    its retry policy is the one every writer process uses."""
    object_ids = [
        (await store.create_message(bench_sandbox())).metadata.id for _ in range(spec.objects)
    ]
    start_at = time.time() + START_DELAY_S
    plans = plan_processes(spec, url, object_ids, timing, start_at, store.retry)
    loop = asyncio.get_running_loop()
    tallies = await asyncio.gather(
        *(loop.run_in_executor(pool, run_process, plan) for plan in plans)
    )
    finals = [await _counter(store, object_id) for object_id in object_ids]
    await delete_objects(store, object_ids)
    return summarize(spec, timing, tallies, sum(finals))


def summarize(spec: LoadSpec, timing: Timing, tallies: Sequence[Tally], final: int) -> LoadResult:
    total = Tally()
    for tally in tallies:
        total.merge(tally)
    return LoadResult(
        spec=spec,
        seconds=timing.duration,
        successes=total.successes,
        exhausted=total.exhausted,
        errors=total.errors,
        conflicts=total.conflicts,
        missed_slots=total.missed,
        latency=Latency.of(total.latencies),
        expected=sum(total.committed.values()),
        final=final,
        first_error=total.first_error,
    )


async def _counter(store: Store, object_id: str) -> int:
    message = await store.get_message(Sandbox, object_id)
    return 0 if message is None else message.status.current_policy_version


async def delete_objects(store: Store, object_ids: Sequence[str]) -> None:
    """Leave the database as found (it may be a shared one, from the environment)."""
    object_type = object_type_of(Sandbox)
    for object_id in object_ids:
        record = await store.get(object_type, object_id)
        if record is not None:
            await store.delete_if(object_type, object_id, record.resource_version)
