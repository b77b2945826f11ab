"""Fan a driver's events out to its consumers, without an unbounded buffer in between.

The gateway's consumer is a **sink**: a synchronous callback (``attach``) that the driver
calls for every event as it happens. The reconcile loop's sink keeps only the latest snapshot
per sandbox id and enqueues the id on its bounded work queue, so a burst of events about one
sandbox costs one reconcile and memory stays bounded by the number of sandboxes.

``subscribe`` (the driver's ``events()``) remains for diagnostics and tests that want to read
the stream in order: each subscription is a queue of at most ``STREAM_LIMIT`` events; when a
reader lags further behind, the oldest events are dropped (``dropped`` counts them), since
nothing in the gateway depends on such a stream for correctness. A subscription nobody
references any more is dropped (weak references).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import weakref
from collections.abc import AsyncIterator, Callable

from shellgate.controller.drivers.base import DriverEvent

log = logging.getLogger(__name__)

EventSink = Callable[[DriverEvent], None]
STREAM_LIMIT = 10_000


class Subscription(AsyncIterator[DriverEvent]):
    """One reader's bounded buffer; ``None`` marks the end of the stream."""

    def __init__(self) -> None:
        self._buffer: collections.deque[DriverEvent | None] = collections.deque()
        self._ready = asyncio.Event()
        self._ended = False
        self.dropped = 0

    def put(self, event: DriverEvent | None) -> None:
        if len(self._buffer) >= STREAM_LIMIT:
            self._buffer.popleft()
            self.dropped += 1
        self._buffer.append(event)
        self._ready.set()

    def drain(self) -> list[DriverEvent]:
        """Everything buffered now, without waiting (the end-of-stream mark is kept)."""
        out = [event for event in self._buffer if event is not None]
        ended = any(event is None for event in self._buffer)
        self._buffer.clear()
        if ended:
            self._buffer.append(None)
        return out

    async def __anext__(self) -> DriverEvent:
        if self._ended:
            raise StopAsyncIteration
        while not self._buffer:
            self._ready.clear()
            await self._ready.wait()
        event = self._buffer.popleft()
        if event is None:
            self._ended = True
            raise StopAsyncIteration
        return event


class EventFanout:
    def __init__(self) -> None:
        self._subscribers: weakref.WeakSet[Subscription] = weakref.WeakSet()
        self._sinks: list[EventSink] = []
        self._closed = False

    def attach(self, sink: EventSink) -> Callable[[], None]:
        """Call ``sink`` for every event published from now on; returns a detach function."""
        self._sinks.append(sink)
        return lambda: self._sinks.remove(sink) if sink in self._sinks else None

    def subscribe(self) -> AsyncIterator[DriverEvent]:
        subscription = Subscription()
        if self._closed:
            subscription.put(None)
        else:
            self._subscribers.add(subscription)
        return subscription

    def publish(self, event: DriverEvent) -> None:
        for sink in tuple(self._sinks):
            try:
                sink(event)
            except Exception:  # a consumer's bug must not break the driver's watch
                log.exception("a driver event sink failed")
        for subscriber in list(self._subscribers):
            subscriber.put(event)

    def close(self) -> None:
        self._closed = True
        self._sinks.clear()
        for subscriber in list(self._subscribers):
            subscriber.put(None)


class PublishesThroughFanout:
    """``events()`` and ``attach()`` of a driver that publishes through ``self._fanout``."""

    _fanout: EventFanout

    def events(self) -> AsyncIterator[DriverEvent]:
        """Every event from this call on, until ``close()``, in order (a bounded buffer per
        caller). The gateway uses ``attach`` instead."""
        return self._fanout.subscribe()

    def attach(self, sink: EventSink) -> Callable[[], None]:
        """Call ``sink`` for every event from now on; returns a detach function."""
        return self._fanout.attach(sink)
