"""Worker processes that start racing at the same moment.

Spawning a process, importing shellgate and connecting take long enough that processes
started one after another rarely overlap; a race test whose workers do not overlap can pass
with its guard removed. Workers therefore wait at a barrier once they are ready.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from multiprocessing.synchronize import Barrier
from typing import Any

BARRIER_TIMEOUT_S = 60.0

# Set in each worker process by the pool's initializer: a barrier cannot be passed as a task
# argument, only when the process is created.
_start_line: Barrier | None = None


def _join_start_line(barrier: Barrier) -> None:
    global _start_line
    _start_line = barrier


def wait_for_the_others() -> None:
    """Block until every worker of this ``run_in_processes`` call is here."""
    assert _start_line is not None, "only workers of run_in_processes have a start line"
    _start_line.wait(BARRIER_TIMEOUT_S)


def run_in_processes(target: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``target`` once per argument tuple, each in its own spawned process."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(args))
    with context.Pool(len(args), initializer=_join_start_line, initargs=(barrier,)) as pool:
        return pool.starmap(target, args)
