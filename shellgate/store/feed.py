"""The change feed: hints that rows changed, fanned out to the watchers in the process.

A backend feeds the hub from its source (Postgres ``LISTEN``; SQLite an in-process signal on
each local write plus a cheap poll of ``PRAGMA data_version`` for other processes). The hub
never blocks a writer.

Two kinds of watcher listen. A ``Subscription`` hears every hint, in a queue (the reconcile
loop, which acts on any row): one that falls behind loses its queued hints and gets one
wildcard hint instead, which tells it to re-read everything it watches. A ``RowWatch`` cares
about one row (a WatchSandbox stream): the hub keeps those in a dict by row id, so a hint
wakes only the watches of its row, and a wildcard (a write by another process on SQLite, a
change-feed reconnect on Postgres: anything may have changed) wakes every one of them once.
A row watch is a flag, not a queue: it cannot overflow, and however many hints arrive
before its owner looks, the owner re-reads the row once and sees the latest state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

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


class RowWatch:
    """Wakes its owner when one row may have changed (or when ``wake`` is called).

    The owner registers the watch (``async with``) before it reads the row, so every change
    after that read sets the flag: nothing can fall between the read and the wait. A wake-up
    costs a flag and, only while the owner is actually waiting, one future: no task, no timer.
    """

    __slots__ = ("_changed", "_hub", "_waiter", "_woken", "id", "last_event")

    def __init__(self, hub: ChangeHub, id: str) -> None:
        self._hub = hub
        self.id = id
        self._changed = False
        self._woken = False
        self._waiter: asyncio.Future[None] | None = None
        self.last_event: ChangeEvent | None = None
        """The last hint that named this row (None for wildcards), for the feed-lag gauge."""

    def notify(self, event: ChangeEvent) -> None:
        """The hub's call: the row may have changed."""
        self._changed = True
        if event.id is not None:
            self.last_event = event
        self.wake()

    def wake(self) -> None:
        """Wake the owner without a row change (it has something else to look at)."""
        self._woken = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until ``notify`` or ``wake`` was called since the last ``wait`` returned."""
        if not self._woken:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self._woken = False

    def take_change(self) -> bool:
        """True (once) when the row may have changed since the last call."""
        changed, self._changed = self._changed, False
        return changed

    async def __aenter__(self) -> RowWatch:
        await self._hub.add_watch(self)
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self._hub.remove_watch(self)


class ChangeHub:
    """Fans hints out to subscribers and row watches; starts the backend's source on first
    use."""

    def __init__(self, start_source: Callable[[], Awaitable[None]]) -> None:
        self._subscribers: set[Subscription] = set()
        self._watches: dict[str, set[RowWatch]] = {}
        self._start_source = start_source
        self._started = False
        self._start_lock = asyncio.Lock()

    async def _ensure_source(self) -> None:
        # The lock only serialises starting this process's own listener task; it guards no
        # shared database state.
        if self._started:
            return
        async with self._start_lock:
            if not self._started:
                await self._start_source()
                self._started = True

    async def add(self, subscription: Subscription) -> None:
        await self._ensure_source()
        self._subscribers.add(subscription)

    def remove(self, subscription: Subscription) -> None:
        self._subscribers.discard(subscription)

    async def add_watch(self, watch: RowWatch) -> None:
        await self._ensure_source()
        self._watches.setdefault(watch.id, set()).add(watch)

    def remove_watch(self, watch: RowWatch) -> None:
        watches = self._watches.get(watch.id)
        if watches is not None:
            watches.discard(watch)
            if not watches:
                del self._watches[watch.id]

    @property
    def listened(self) -> bool:
        """Whether anyone would hear a hint now (a writer may skip building one if not)."""
        return bool(self._subscribers or self._watches)

    def publish(self, event: ChangeEvent) -> None:
        for subscription in tuple(self._subscribers):
            subscription.offer(event)
        if event.id is None:
            targets: list[RowWatch] = [w for ws in self._watches.values() for w in ws]
        else:
            targets = list(self._watches.get(event.id, ()))
        for watch in targets:
            watch.notify(event)
