"""Platform events (Kubernetes Events, process exits): fanned out in memory, never stored.

Every replica watches the driver, so every replica's bus sees every event; a WatchSandbox
stream on any replica can follow them. A slow follower drops events rather than blocking the
driver's watch loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from shellgate.controller.drivers.base import PlatformEvent

QUEUE_SIZE = 256
TAIL_SIZE = 64


class PlatformEventBus:
    def __init__(self) -> None:
        self._followers: dict[str, set[asyncio.Queue[PlatformEvent]]] = {}
        self._wakers: dict[asyncio.Queue[PlatformEvent], Callable[[], None]] = {}
        self._tails: dict[str, deque[PlatformEvent]] = {}

    def publish(self, event: PlatformEvent) -> None:
        self._tails.setdefault(event.sandbox_id, deque(maxlen=TAIL_SIZE)).append(event)
        for queue in tuple(self._followers.get(event.sandbox_id, ())):
            if queue.full():
                queue.get_nowait()  # drop the oldest; followers want the newest
            queue.put_nowait(event)
            wake = self._wakers.get(queue)
            if wake is not None:
                wake()

    def tail(self, sandbox_id: str, count: int) -> list[PlatformEvent]:
        events = list(self._tails.get(sandbox_id, ()))
        return events[-count:] if count else []

    def follow(
        self, sandbox_id: str, wake: Callable[[], None] | None = None
    ) -> asyncio.Queue[PlatformEvent]:
        """A queue of the sandbox's events; ``wake`` is called after each one is queued, so a
        follower that also waits for something else needs no task per queue to wait on it."""
        queue: asyncio.Queue[PlatformEvent] = asyncio.Queue(QUEUE_SIZE)
        self._followers.setdefault(sandbox_id, set()).add(queue)
        if wake is not None:
            self._wakers[queue] = wake
        return queue

    def unfollow(self, sandbox_id: str, queue: asyncio.Queue[PlatformEvent]) -> None:
        self._wakers.pop(queue, None)
        followers = self._followers.get(sandbox_id)
        if followers is not None:
            followers.discard(queue)
            if not followers:
                del self._followers[sandbox_id]

    def forget(self, sandbox_id: str) -> None:
        self._tails.pop(sandbox_id, None)
