"""The change feed: hints that rows changed, fanned out to every subscriber in the process.

A backend feeds the hub from its source (Postgres ``LISTEN``; SQLite an in-process signal on
each local write plus a cheap poll of ``PRAGMA data_version`` for other processes). The hub
never blocks a writer: a subscriber that falls behind loses its queued hints and gets one
wildcard hint instead, which tells it to re-read everything it watches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType

from shellgate.store.records import ChangeEvent

WILDCARD = ChangeEvent(object_type=None, id=None)
QUEUE_SIZE = 1024


class Subscription:
    """One subscriber's queue of change hints. Use as an async context manager."""

    def __init__(self, hub: ChangeHub) -> None:
        self._hub = hub
        self._queue: asyncio.Queue[ChangeEvent] = asyncio.Queue(QUEUE_SIZE)
        self._overflowed = False

    def offer(self, event: ChangeEvent) -> None:
        if self._overflowed:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._overflowed = True

    async def get(self) -> ChangeEvent:
        """The next hint; a wildcard if hints were dropped because this subscriber lagged."""
        if self._overflowed:
            self._overflowed = False
            while not self._queue.empty():
                self._queue.get_nowait()
            return WILDCARD
        return await self._queue.get()

    async def __aenter__(self) -> Subscription:
        await self._hub.add(self)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._hub.remove(self)


class ChangeHub:
    """Fans hints out to subscribers; starts the backend's source on first use."""

    def __init__(self, start_source: Callable[[], Awaitable[None]]) -> None:
        self._subscribers: set[Subscription] = set()
        self._start_source = start_source
        self._started = False
        self._start_lock = asyncio.Lock()

    async def add(self, subscription: Subscription) -> None:
        # The lock only serialises starting this process's own listener task; it guards no
        # shared database state.
        async with self._start_lock:
            if not self._started:
                await self._start_source()
                self._started = True
        self._subscribers.add(subscription)

    def remove(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    def publish(self, event: ChangeEvent) -> None:
        for subscription in tuple(self._subscribers):
            subscription.offer(event)
