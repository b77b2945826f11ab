"""Keeps bench/ from rotting: its workloads, for a fraction of a second, on a SQLite file.

No Postgres, no etcd, no worker processes and no plot: the side-by-side comparison runs
with the SQLite floor and store (and the SQLAlchemy peer when it is installed), the writer
group that each worker process of the benchmark runs is run here in the test's own event
loop, and the report is rendered into a file that already holds another section, which
must survive. Nothing here is timed.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench import machine, report
from bench.compare import Plan, run_comparison
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
    )
    results.loads = {"c": steady_load, "d": flat_out, "e": flat_out}
    results.sweep = [steady_load]

    plan = Plan(rounds=2, round_s=0.1, warmup=0.05, many_rounds=1)
    comparison = await run_comparison({"sqlite": url}, None, RetryPolicy(), plan, lambda _: None)
    roles = [s.contender.role for s in comparison.single]
    assert roles[:2] == ["floor", "shellgate"] and all(
        len(s.rounds) == 2 for s in comparison.single
    )
    assert all(m.lost == 0 and m.expected > 0 for m in comparison.many)
    assert any("etcd not installed" in skipped for skipped in comparison.skipped)

    facts = machine.finished(machine.collect())
    target = tmp_path / "benchmarks.md"
    target.write_text(
        "# Benchmarks\n\n<!-- bench.scale:begin -->\nscale figures\n<!-- bench.scale:end -->\n"
    )
    for _ in range(2):  # the second run replaces the first one's section
        section = report.document(comparison, [results], facts, TINY, "img/x.png", "smoke test")
        report.write_section(target, section)
    written = target.read_text()
    assert written.count(report.BEGIN_MARKER) == 1 and written.count(report.END_MARKER) == 1
    assert "<!-- bench.scale:begin -->\nscale figures\n<!-- bench.scale:end -->" in written
    assert "shellgate / physical floor" in written and "![goodput" in written
    assert "skipped: etcd not installed" in written
    assert "(c) zero lost updates" in report.console_report(comparison, [results])


def test_a_new_benchmarks_file_gets_the_shared_header(tmp_path: Path) -> None:
    target = tmp_path / "docs" / "benchmarks.md"
    report.write_section(target, "## Store\n\nfigures")
    text = target.read_text()
    assert text.startswith(report.SHARED_HEADER)
    assert f"{report.BEGIN_MARKER}\n## Store\n\nfigures\n{report.END_MARKER}" in text
