"""The multi-process loads of one backend, gathered into ``BackendResults``.

(c) steady, (d) flat out on one object, (e) flat out on one object per writer, and the
steady sweep over 1, 2, 4 and 8 writers (16 is (c) itself), each writer process with its
own store as gateway replicas would have. The single-writer comparison with the floors and
the peers is bench/compare.py.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from bench.floor import open_floor
from bench.loads import (
    SWEEP_WRITERS,
    flat_out_shared,
    flat_out_spread,
    run_load,
    steady,
)
from bench.postgres_server import postgres_url
from bench.stats import LoadResult, LoadSpec
from bench.workloads import Timing
from shellgate.store import RetryPolicy, Store, connect

BACKENDS = ("sqlite", "postgres")
STEADY_WRITERS = 16

Progress = Callable[[str], None]


@dataclass(slots=True)
class BackendResults:
    backend: str
    engine_version: str
    settings: dict[str, str]
    retry: RetryPolicy
    loads: dict[str, LoadResult] = field(default_factory=dict)  # "c", "d", "e"
    sweep: list[LoadResult] = field(default_factory=list)


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
        results = BackendResults(
            backend=backend,
            engine_version=await floor.engine_version(),
            settings=await floor.settings(),
            retry=retry,
        )
        await floor.close()
        await measure_loads(results, store, url, timing, pool, progress)
    finally:
        await store.close()
    return results


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
