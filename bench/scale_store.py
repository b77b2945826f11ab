"""The store half of ``bench.scale``: creates, gets, lists and counts at a given table size.

Rows are realistic sandboxes (bench/objects.py) spread over four workspaces, labelled
``app=bench`` and ``team=t<i mod 100>``, so ``team=t7`` selects 1 % of them and
``team=nomatch`` none. Every call goes through the ``Store`` API, as the gateway makes it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from bench.objects import bench_sandbox
from bench.stats import Latency
from shellgate.store import Store, StoreUnavailable, UniqueViolation

WORKSPACES = 4
TEAMS = 100
CREATORS = 16
REPEATS = 15
GETS = 300
PAGE = 100

SELECTORS = {
    "team=nomatch": "team=nomatch",
    "team=t7 (1 %)": "team=t7",
    "team in (t1,t2) (2 %)": "team in (t1,t2)",
    "app (every row)": "app",
    "team!=t1 (99 %)": "team!=t1",
}


@dataclass
class StoreScale:
    backend: str
    rows: int
    creates_per_s: float
    get: Latency
    list_first: Latency
    list_workspace: Latency
    page: Latency
    full_pass_s: float
    count: Latency
    selectors: dict[str, Latency] = field(default_factory=dict)
    plans: dict[str, str] = field(default_factory=dict)


def sandbox_number(i: int) -> Any:
    message = bench_sandbox()
    message.metadata.workspace = f"w{i % WORKSPACES}"
    message.metadata.labels.clear()
    message.metadata.labels.update({"app": "bench", "team": f"t{i % TEAMS}"})
    return message


async def fill(store: Store, start: int, stop: int) -> tuple[list[str], float]:
    """Create rows ``start``..``stop`` with CREATORS concurrent creators; ids and creates/s."""
    ids: list[str] = []
    numbers = iter(range(start, stop))

    async def creator() -> None:
        for i in numbers:
            ids.append(await create_as_a_client(store, sandbox_number(i)))

    began = time.perf_counter()
    await asyncio.gather(*(creator() for _ in range(CREATORS)))
    elapsed = time.perf_counter() - began
    return ids, (stop - start) / elapsed if elapsed else 0.0


FILL_RETRIES = 5


async def create_as_a_client(store: Store, message: Any) -> str:
    """Create ``message``; on UNAVAILABLE (a SQLite call that found no turn on the connection
    within its bound, seen once filling 100k rows) try again after a pause, as a client
    would. A retry refused as a duplicate means an earlier try was written."""
    for attempt in range(1, FILL_RETRIES + 1):
        try:
            created = await store.create_message(message, status="ready")
            return str(created.metadata.id)
        except UniqueViolation:
            if attempt == 1:
                raise
            return str(message.metadata.id)
        except StoreUnavailable:
            if attempt == FILL_RETRIES:
                raise
            UNAVAILABLE_RETRIES.append(attempt)
            await asyncio.sleep(0.1 * attempt)
    raise AssertionError("unreachable")


UNAVAILABLE_RETRIES: list[int] = []
"""Every retry ``create_as_a_client`` made, for the run's log."""


async def timed(call: Callable[[], Awaitable[object]], repeats: int = REPEATS) -> Latency:
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - began)
    return Latency.of(samples)


async def full_pass(store: Store) -> tuple[float, Latency]:
    """Page through every sandbox of every workspace, as the resync does."""
    samples: list[float] = []
    token = ""
    began = time.perf_counter()
    while True:
        started = time.perf_counter()
        page = await store.list("sandbox", workspace=None, limit=PAGE, page_token=token)
        samples.append(time.perf_counter() - started)
        token = page.next_page_token
        if not token:
            return time.perf_counter() - began, Latency.of(samples)


async def measure(store: Store, ids: list[str], creates_per_s: float) -> StoreScale:
    rng = random.Random(7)
    sample = [rng.choice(ids) for _ in range(GETS)]
    picks = iter(sample)
    get = await timed(lambda: store.get("sandbox", next(picks)), GETS)
    first = await timed(lambda: store.list("sandbox", workspace=None, limit=PAGE))
    in_workspace = await timed(lambda: store.list("sandbox", workspace="w1", limit=PAGE))
    pass_s, page = await full_pass(store)
    count = await timed(lambda: store.count_by_status("sandbox"))
    result = StoreScale(
        store.backend, len(ids), creates_per_s, get, first, in_workspace, page, pass_s, count
    )
    for label, selector in SELECTORS.items():
        result.selectors[label] = await timed(
            lambda s=selector: store.list("sandbox", workspace=None, selector=s, limit=PAGE)
        )
    result.plans = await plans(store)
    return result


async def plans(store: Store) -> dict[str, str]:
    """The database's plan for the statements a selector list and a later page send."""
    sent: list[tuple[str, Any]] = []
    original = store._rows  # type: ignore[attr-defined]

    async def spy(sql: str, params: Any, *, read: bool = False) -> Any:
        sent.append((sql, params))
        return await original(sql, params, read=read)

    explain = "EXPLAIN QUERY PLAN " if store.backend == "sqlite" else "EXPLAIN "
    found: dict[str, str] = {}
    store._rows = spy  # type: ignore[attr-defined]
    try:
        middle = await store.list("sandbox", workspace=None, limit=PAGE)
        for label, call in (
            (
                "list, all workspaces, next page",
                lambda: store.list(
                    "sandbox", workspace=None, limit=PAGE, page_token=middle.next_page_token
                ),
            ),
            (
                "selector team=nomatch",
                lambda: store.list("sandbox", workspace=None, selector="team=nomatch", limit=PAGE),
            ),
            ("count by status", lambda: store.count_by_status("sandbox")),
        ):
            await call()
            sql, params = sent[-1]
            rows = await original(explain + sql, params, read=True)
            found[label] = "\n".join(str(row[-1]) for row in rows)
    finally:
        del store._rows  # type: ignore[attr-defined]
    return found
