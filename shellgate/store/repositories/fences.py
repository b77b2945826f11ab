"""``SharedFences``: concurrent fences of one row in this process share one write.

A fence (``ProviderRepository.fence``) moves a row's version on *after* the caller wrote a
reference to it; any move that starts after that write proves what the fence must prove.
So callers asking at once need not each move it: the first starts a move, and everyone who
asks while it runs waits for the next one, which starts once the running one ends (after
their own writes, since they asked after writing). Each caller still gets a move that began
after its write, and its answer (the row exists, or not). On a shared provider this turns
16 concurrent attaches' 16 moves of one row (on Postgres, 16 writers queued on its row lock,
each waiting for the previous commit) into about two.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

Move = Callable[[], Awaitable[bool]]
"""One move of the row; False when the row is gone."""


@dataclass
class _Row:
    running: bool = False
    waiting: list[asyncio.Future[bool]] = field(default_factory=list)


class SharedFences:
    """One move at a time per row key; callers asking meanwhile share the next one."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], _Row] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # the shared moves under way

    async def fence(self, key: tuple[str, str], move: Move) -> bool:
        row = self._rows.setdefault(key, _Row())
        if not row.running:
            return await self._run(key, row, move)
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        row.waiting.append(waiter)
        return await waiter

    async def _run(self, key: tuple[str, str], row: _Row, move: Move) -> bool:
        """Run ``move`` for the caller, then the next shared move for those who waited."""
        row.running = True
        try:
            return await move()
        finally:
            waiting, row.waiting = row.waiting, []
            if waiting:
                # A context of its own: not the first caller's (its gRPC deadline, a pinned
                # connection), which the callers sharing the move do not share.
                started: list[bool] = []
                task = asyncio.get_running_loop().create_task(
                    self._run_for(key, row, move, waiting, started), context=contextvars.Context()
                )
                self._tasks.add(task)
                task.add_done_callback(
                    lambda done: self._shared_done(done, key, row, waiting, started)
                )
            else:
                row.running = False
                del self._rows[key]

    def _shared_done(
        self,
        task: asyncio.Task[None],
        key: tuple[str, str],
        row: _Row,
        waiting: list[asyncio.Future[bool]],
        started: list[bool],
    ) -> None:
        """A shared move's task ended. Cancelled before it ran (a shutdown), it never reached
        ``_run``: release its callers, those who came since, and the row, or later fences of
        it would wait forever. (Once it ran, ``_run`` and ``_run_for`` did all that.)"""
        self._tasks.discard(task)
        if started or not task.cancelled():
            return
        for waiter in (*waiting, *row.waiting):
            waiter.cancel()
        row.waiting = []
        row.running = False
        if self._rows.get(key) is row:
            del self._rows[key]

    async def _run_for(
        self,
        key: tuple[str, str],
        row: _Row,
        move: Move,
        waiting: list[asyncio.Future[bool]],
        started: list[bool],
    ) -> None:
        """One move, started now, answering every caller in ``waiting``."""
        started.append(True)
        try:
            result = await self._run(key, row, move)
        except BaseException as error:  # each waiter gets the same answer, error included
            for waiter in waiting:
                if waiter.done():
                    continue
                if isinstance(error, Exception):
                    waiter.set_exception(error)
                else:
                    waiter.cancel()
            if not isinstance(error, Exception):
                raise
            return
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(result)
