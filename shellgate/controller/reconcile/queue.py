"""A work queue of keys, in the shape of client-go's rate-limited work queue.

Sources (driver events, the store's change feed, the periodic resync) only add keys; workers
take a key, reconcile it from the current state, and mark it done. The queue guarantees:

- **Coalescing.** A key already waiting is not added twice. A key added while a worker holds
  it is "dirty": it is not handed to a second worker, and it is handed out once more after
  ``done``. So one key is never processed concurrently with itself, and a burst of N changes
  to one key costs at most two reconciles, not N.
- **A bound.** At most ``max_waiting`` distinct keys wait at once. When full, ``add`` (the
  async producers: change feed, resync) waits for room, which slows the producer down
  (back-pressure) instead of growing memory; ``offer`` (synchronous producers that must not
  block, such as a driver's event callback) drops the key and counts it in
  ``shellgate_workqueue_dropped_total``. Dropping is safe because reconcile never relies on
  an event it was given: the periodic resync enqueues every key the driver and the store
  know, so a dropped key is repaired within one resync interval.
- **Retry with per-key backoff.** ``add_rate_limited`` re-adds a key after
  ``base * 2**failures`` seconds (capped, with jitter so replicas and keys that failed
  together spread out), like client-go's ``AddRateLimited``; ``forget`` resets the count
  after a success.
- **Shutdown.** ``shutdown`` wakes every waiting worker and producer; ``get`` then returns
  None and further adds are ignored.

Depth, adds, retries and drops are exported per queue name (a closed set: ``sandbox``,
``draft``), never per key.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

DEFAULT_MAX_WAITING = 10_000
DEFAULT_BASE_DELAY = 0.005
DEFAULT_MAX_DELAY = 30.0
DEFAULT_MAX_RETRIES = 10


class QueueMetrics(Protocol):
    """What the queue reports; ``Metrics`` implements it (labels by queue name only)."""

    def queue_depth(self, queue: str, depth: int) -> None: ...

    def queue_added(self, queue: str) -> None: ...

    def queue_retried(self, queue: str) -> None: ...

    def queue_dropped(self, queue: str) -> None: ...


class _NoMetrics:
    def queue_depth(self, queue: str, depth: int) -> None:
        pass

    def queue_added(self, queue: str) -> None:
        pass

    def queue_retried(self, queue: str) -> None:
        pass

    def queue_dropped(self, queue: str) -> None:
        pass


class WorkQueue(Generic[K]):
    """Coalescing, bounded, rate-limited work queue (see the module docstring)."""

    def __init__(
        self,
        name: str,
        *,
        max_waiting: int = DEFAULT_MAX_WAITING,
        base_delay: float = DEFAULT_BASE_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
        metrics: QueueMetrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if max_waiting < 1:
            raise ValueError("max_waiting must be at least 1")
        self.name = name
        self.max_waiting = max_waiting
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._metrics = metrics or _NoMetrics()
        self._rng = rng or random.Random()
        self._order: collections.deque[K] = collections.deque()
        self._dirty: set[K] = set()
        self._processing: set[K] = set()
        self._failures: dict[K, int] = {}
        self._delayed: dict[K, asyncio.TimerHandle] = {}
        self._changed = asyncio.Condition()
        self._shutting_down = False

    # ---- producers -----------------------------------------------------------------------

    def offer(self, key: K) -> bool:
        """Add without waiting; False (and counted as dropped) when the queue is full."""
        if self._shutting_down:
            return False
        if key in self._dirty:
            return True
        if self.full:
            self._metrics.queue_dropped(self.name)
            return False
        self._insert(key)
        return True

    async def add(self, key: K) -> None:
        """Add, waiting for room while the queue is full (back-pressure on the producer)."""
        async with self._changed:
            await self._changed.wait_for(
                lambda: self._shutting_down or key in self._dirty or not self.full
            )
        if not self._shutting_down and key not in self._dirty:
            self._insert(key)

    def add_rate_limited(self, key: K) -> float:
        """Re-add ``key`` after its backoff; returns the delay chosen."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        ceiling = min(self._max_delay, self._base_delay * 2**failures)
        delay: float = ceiling * self._rng.uniform(0.5, 1.0)
        self._metrics.queue_retried(self.name)
        self.add_after(key, delay)
        return delay

    def add_after(self, key: K, delay: float) -> None:
        """Add ``key`` once ``delay`` seconds have passed (an earlier pending timer wins)."""
        if self._shutting_down or key in self._delayed:
            return
        loop = asyncio.get_running_loop()
        self._delayed[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: K) -> None:
        self._delayed.pop(key, None)
        if not self.offer(key):
            # Full: wait for room in the background rather than lose a retry.
            asyncio.get_running_loop().create_task(self.add(key))

    def forget(self, key: K) -> None:
        """Reset ``key``'s backoff (after it was processed successfully)."""
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    # ---- consumers -----------------------------------------------------------------------

    async def get(self) -> K | None:
        """The next key to process, marked as processing; None once shut down."""
        async with self._changed:
            await self._changed.wait_for(lambda: self._shutting_down or bool(self._order))
            if self._shutting_down:
                return None
            key = self._order.popleft()
            self._dirty.discard(key)
            self._processing.add(key)
            self._changed.notify_all()  # room for a waiting producer
        self._report_depth()
        return key

    def done(self, key: K) -> None:
        """Processing of ``key`` finished; a key added meanwhile is handed out again."""
        self._processing.discard(key)
        if key in self._dirty and not self._shutting_down:
            self._order.append(key)
        self._wake()

    async def run(
        self,
        handler: Callable[[K], Awaitable[None]],
        *,
        workers: int = 2,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        """Process keys with ``workers`` tasks until shut down or cancelled.

        ``handler`` raising means "try again later": the key is re-added with backoff, up to
        ``max_retries`` times, then dropped (the next resync brings it back).
        """
        await asyncio.gather(*(self._work(handler, max_retries) for _ in range(workers)))

    async def _work(self, handler: Callable[[K], Awaitable[None]], max_retries: int) -> None:
        while True:
            key = await self.get()
            if key is None:
                return
            try:
                await handler(key)
            except asyncio.CancelledError:
                self.done(key)
                raise
            except Exception:
                if self.failures(key) < max_retries:
                    self.add_rate_limited(key)
                else:
                    log.warning(
                        "%s queue: giving up on a key after %d retries", self.name, max_retries
                    )
                    self.forget(key)
            else:
                self.forget(key)
            self.done(key)

    # ---- state ---------------------------------------------------------------------------

    @property
    def full(self) -> bool:
        return len(self._dirty) >= self.max_waiting

    def __len__(self) -> int:
        """Keys waiting to be handed out (not counting those being processed)."""
        return len(self._order)

    @property
    def idle(self) -> bool:
        return not self._dirty and not self._processing and not self._delayed

    async def wait_idle(self) -> None:
        """Until nothing waits, nothing is processed and no retry is scheduled."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.idle or self._shutting_down)

    def shutdown(self) -> None:
        """Stop handing out keys; wake every waiter; cancel scheduled retries."""
        self._shutting_down = True
        for timer in self._delayed.values():
            timer.cancel()
        self._delayed.clear()
        self._wake()

    # ---- internals -----------------------------------------------------------------------

    def _insert(self, key: K) -> None:
        self._dirty.add(key)
        self._metrics.queue_added(self.name)
        if key not in self._processing:
            self._order.append(key)
        self._report_depth()
        self._wake()

    def _report_depth(self) -> None:
        self._metrics.queue_depth(self.name, len(self._dirty))

    def _wake(self) -> None:
        """Notify waiters from synchronous code (the condition needs its lock to notify)."""
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()
