"""A gate for the repositories' hook points: pause one protocol where a race matters.

``Gate`` is an awaitable hook: the first call (or the first for a chosen key) blocks until
``release()``; later calls pass straight through. A test starts the request to pause, waits
for ``reached``, runs the other request to completion, then releases: the interleaving is
forced, not left to scheduling luck.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")
REACH_TIMEOUT = 10.0


class Gate:
    def __init__(self, key: str | None = None) -> None:
        self.key = key
        self.reached = asyncio.Event()
        self._released = asyncio.Event()
        self._armed = True

    async def __call__(self, key: str) -> None:
        if not self._armed or (self.key is not None and key != self.key):
            return
        self._armed = False
        self.reached.set()
        await self._released.wait()

    def release(self) -> None:
        self._released.set()

    async def hold(self, paused: Awaitable[T]) -> asyncio.Task[T]:
        """Start ``paused`` as a task and return once it waits at this gate."""
        task = asyncio.ensure_future(paused)
        waiter = asyncio.ensure_future(self.reached.wait())
        done, _ = await asyncio.wait(
            {task, waiter}, timeout=REACH_TIMEOUT, return_when="FIRST_COMPLETED"
        )
        if waiter not in done:
            waiter.cancel()
            if task in done:
                task.result()  # raise what it raised
                raise AssertionError("the request finished without reaching the gate")
            raise AssertionError("the request did not reach the gate in time")
        return task
