"""``python -m bench.profile_cas``: where one ``update_message_cas`` spends its time.

Runs the store's single-writer loop and the physical floor under
cProfile on one backend and prints, per operation: wall time, time the event loop spent
waiting for the database (``epoll.poll``; a statement run on the store's database thread
shows up here as waiting), the rest (Python on the event loop thread), and the functions
with the largest own time and their calls per operation. cProfile counts every resumption of a
coroutine as a call, so an ``async def`` that awaited once shows 2 calls; count round trips
on ``socket.send`` instead.

Flags: ``--backend sqlite|postgres`` (default postgres), ``--seconds 5``, ``--top 20``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from bench.floor import PostgresFloor, open_floor
from bench.objects import Sandbox, bench_sandbox, increment
from bench.suite import database_url
from shellgate.store import connect

WAIT_FUNCTION = "<method 'poll' of 'select.epoll' objects>"


@dataclass(frozen=True, slots=True)
class Profiled:
    label: str
    ops: int
    wall_s: float
    stats: pstats.Stats


def _own(stats: pstats.Stats) -> list[tuple[str, int, float, float]]:
    """(function, calls, own seconds, cumulative seconds) for every profiled function."""
    rows = []
    raw = stats.stats  # type: ignore[attr-defined]
    for (file, line, name), (_cc, calls, tottime, cumtime, _callers) in raw.items():
        where = "~" if file == "~" else f"{'/'.join(file.split('/')[-2:])}:{line}"
        rows.append((f"{name} ({where})", calls, tottime, cumtime))
    return rows


async def profile_loop(
    label: str, operation: Callable[[], Awaitable[object]], seconds: float
) -> Profiled:
    for _ in range(200):
        await operation()
    profiler = cProfile.Profile()
    ops = 0
    began = time.perf_counter()
    until = began + seconds
    profiler.enable()
    while time.perf_counter() < until:
        await operation()
        ops += 1
    profiler.disable()
    return Profiled(label, ops, time.perf_counter() - began, pstats.Stats(profiler))


def summary(profiled: Profiled, top: int) -> str:
    rows = _own(profiled.stats)
    per_op_us = 1e6 / profiled.ops
    wait = sum(own for name, _c, own, _cum in rows if name.startswith(WAIT_FUNCTION))
    wall = profiled.wall_s
    lines = [
        f"== {profiled.label}: {profiled.ops} ops in {wall:.2f} s = "
        f"{profiled.ops / wall:,.0f} ops/s",
        f"   per op: wall {wall * per_op_us:,.0f} us = waiting for the database "
        f"{wait * per_op_us:,.0f} us + Python on the loop {(wall - wait) * per_op_us:,.0f} us",
        f"   {'own us/op':>9} {'cum us/op':>9} {'calls/op':>8}  function",
    ]
    for name, calls, own, cum in sorted(rows, key=lambda r: r[2], reverse=True)[:top]:
        lines.append(
            f"   {own * per_op_us:9.1f} {cum * per_op_us:9.1f} {calls / profiled.ops:8.2f}  {name}"
        )
    return "\n".join(lines)


async def profile_backend(url: str, seconds: float) -> list[Profiled]:
    store = await connect(url)
    floor = await open_floor(url)
    try:
        store_id = (await store.create_message(bench_sandbox())).metadata.id
        floor_id = (
            await floor.create_row()
            if isinstance(floor, PostgresFloor)
            else (await store.create_message(bench_sandbox())).metadata.id
        )
        through_floor = await profile_loop(
            "(b) driver floor", lambda: floor.update(floor_id), seconds
        )
        through_store = await profile_loop(
            "(a) update_message_cas",
            lambda: store.update_message_cas(Sandbox, store_id, increment),
            seconds,
        )
    finally:
        await floor.close()
        await store.close()
    return [through_floor, through_store]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_cas", description=__doc__)
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="postgres")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args(argv)
    with database_url(args.backend) as url:
        results = asyncio.run(profile_backend(url, args.seconds))
    for profiled in results:
        print(summary(profiled, args.top), end="\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
