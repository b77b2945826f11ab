"""Keeps bench/ from rotting: its workloads, for a fraction of a second, on a SQLite file.

No Postgres, no worker processes, no plot and no file written: the writer group that each
worker process of the benchmark runs is run here in the test's own event loop, and the
report is rendered to a string.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import machine, report
from bench.floor import open_floor
from bench.loads import flat_out_spread, plan_processes, steady, summarize
from bench.objects import Sandbox, bench_sandbox
from bench.stats import LoadResult, LoadSpec
from bench.suite import BackendResults
from bench.workloads import (
    ProcessPlan,
    Timing,
    floor_single_writer,
    run_writer_group,
    store_single_writer,
)
from shellgate.store import RetryPolicy, Store, connect

TINY = Timing(warmup=0.05, duration=0.25)


async def _new_object(store: Store) -> str:
    return (await store.create_message(bench_sandbox())).metadata.id


async def _counter(store: Store, object_id: str) -> int:
    message = await store.get_message(Sandbox, object_id)
    assert message is not None
    return message.status.current_policy_version


async def _run_in_one_process(store: Store, url: str, spec: LoadSpec) -> LoadResult:
    """The writers ``spec`` spreads over processes, all run here as one group."""
    ids = [await _new_object(store) for _ in range(spec.objects)]
    plans = plan_processes(spec, url, ids, TINY, time.time() + 0.05, store.retry)
    assert len(plans) == spec.processes
    writers = tuple(writer for plan in plans for writer in plan.writers)
    together = ProcessPlan(url, writers, spec.rate, plans[0].start_at, TINY, store.retry)
    tally = await run_writer_group(together)
    final = sum([await _counter(store, object_id) for object_id in ids])
    return summarize(spec, TINY, [tally], final)


async def test_workloads_run_and_report(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    store = await connect(url)
    floor = await open_floor(url)
    try:
        through_store = await store_single_writer(store, await _new_object(store), TINY)
        through_floor = await floor_single_writer(floor, await _new_object(store), TINY)
        steady_load = await _run_in_one_process(store, url, steady(writers=3))
        flat_out = await _run_in_one_process(store, url, flat_out_spread(writers=2))
    finally:
        await floor.close()
        await store.close()

    assert through_store.result().calls > 0 and through_floor.result().calls > 0
    for load in (steady_load, flat_out):
        assert load.successes > 0 and load.errors == 0, load.first_error
        assert load.lost == 0 and load.expected > 0

    results = BackendResults(
        backend="sqlite",
        engine_version="3.x",
        settings={"synchronous": "FULL"},
        retry=RetryPolicy(),
        store=through_store.result(),
        floor=through_floor.result(),
        round_ratios=[1.1, 0.9, 1.0],
    )
    results.loads = {"c": steady_load, "d": flat_out, "e": flat_out}
    results.sweep = [steady_load]
    facts = machine.finished(machine.collect())
    document = report.document([results], facts, TINY, "img/x.png", "smoke test")
    assert "(a)/(b)" in document and "![goodput" in document and "1.00 [0.90-1.10]" in document
    assert "(c) zero lost updates" in report.console_report([results])
