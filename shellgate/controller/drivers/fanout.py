"""Fan a driver's events out to every consumer of ``events()``.

Each call of ``subscribe()`` gets its own unbounded queue, receiving every event published
from then on until ``close()`` ends all streams. A subscription nobody references any more is
dropped (weak references), so an abandoned consumer costs nothing.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator

from shellgate.controller.drivers.base import DriverEvent


class Subscription(AsyncIterator[DriverEvent]):
    """One consumer's queue; ``None`` in the queue marks the end of the stream."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[DriverEvent | None] = asyncio.Queue()
        self._ended = False

    def put(self, event: DriverEvent | None) -> None:
        self._queue.put_nowait(event)

    async def __anext__(self) -> DriverEvent:
        if self._ended:
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            self._ended = True
            raise StopAsyncIteration
        return event


class EventFanout:
    def __init__(self) -> None:
        self._subscribers: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._closed = False

    def subscribe(self) -> AsyncIterator[DriverEvent]:
        subscription = Subscription()
        if self._closed:
            subscription.put(None)
        else:
            self._subscribers.add(subscription)
        return subscription

    def publish(self, event: DriverEvent) -> None:
        for subscriber in list(self._subscribers):
            subscriber.put(event)

    def close(self) -> None:
        self._closed = True
        for subscriber in list(self._subscribers):
            subscriber.put(None)
