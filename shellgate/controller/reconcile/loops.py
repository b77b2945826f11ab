"""Start the reconcile loops of one replica: queues, workers and the three sources.

``attach_reconcilers`` builds them and attaches to the driver's events (call it before
``driver.start()``, so nothing the driver emits while starting is missed). ``start`` then
runs the sandbox and draft workers, the change-feed follower, and the resync (at once, then
every ``resync_seconds`` ±20 %). Every replica runs all of it; they agree through
version-bound writes alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shellgate.controller.gateway import Gateway
from shellgate.controller.reconcile.drafts import DraftReconciler
from shellgate.controller.reconcile.liveness import OwnerLiveness
from shellgate.controller.reconcile.sandboxes import SandboxReconciler, jittered

log = logging.getLogger(__name__)

FEED_RETRY_SECONDS = 1.0


@dataclass
class Reconcilers:
    sandboxes: SandboxReconciler
    drafts: DraftReconciler
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    detach: Callable[[], None] = lambda: None
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once the first resync (after subscribing to the change feed) has enqueued all."""

    def start(self, resync_seconds: float, *, workers: int = 2) -> None:
        """Run the workers, the change-feed follower and the resync as tasks."""
        rng = random.Random()
        liveness = self.sandboxes.liveness
        if liveness is not None:
            self.tasks.append(asyncio.create_task(liveness.beat_forever(), name="heartbeat"))
        self.tasks += [
            asyncio.create_task(self.sandboxes.run(workers=workers), name="reconcile-sandboxes"),
            asyncio.create_task(self.drafts.run(), name="reconcile-drafts"),
            asyncio.create_task(self._follow_changes(), name="reconcile-feed"),
            asyncio.create_task(self._resync_forever(resync_seconds, rng), name="resync"),
        ]

    async def settled(self) -> None:
        """Until the first resync is done and both queues are idle (tests, readiness)."""
        await self.synced.wait()
        await self.sandboxes.queue.wait_idle()
        await self.drafts.queue.wait_idle()

    async def stop(self) -> None:
        self.detach()
        self.sandboxes.queue.shutdown()
        self.drafts.queue.shutdown()
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow_changes(self) -> None:
        """Enqueue the keys of changed rows; after a (re)subscription, everything."""
        gw = self.sandboxes.gw
        while True:
            try:
                async with gw.store.subscribe() as feed:
                    await self._resync_once()
                    self.synced.set()
                    while True:
                        change = await feed.get()
                        await self.sandboxes.hint(change)
                        await self.drafts.hint(change)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("change feed failed; resubscribing in %.0f s", FEED_RETRY_SECONDS)
                await asyncio.sleep(FEED_RETRY_SECONDS)

    async def _resync_forever(self, interval_seconds: float, rng: random.Random) -> None:
        """Resync every ``interval_seconds`` ±20 % (the feed follower did the first one);
        0 or less disables the periodic resync."""
        if interval_seconds <= 0:
            log.info("periodic resync disabled (interval %s)", interval_seconds)
            return
        while True:
            await asyncio.sleep(jittered(interval_seconds, rng))
            await self._resync_once()

    async def _resync_once(self) -> None:
        await self.sandboxes.resync_forever(0, random.Random())  # one pass, errors counted
        try:
            await self.drafts.resync()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("draft resync failed")


def attach_reconcilers(
    gw: Gateway,
    *,
    grace_seconds: float | None = None,
    settle_after_seconds: float | None = None,
    provisioning_deadline_seconds: float = 0.0,
) -> Reconcilers:
    """Build the reconcilers and attach to the driver's events; ``start`` runs them."""
    liveness = OwnerLiveness(gw) if gw.driver.routes_by_owner else None
    sandboxes = SandboxReconciler(
        gw,
        grace_seconds=grace_seconds,
        liveness=liveness,
        provisioning_deadline_seconds=provisioning_deadline_seconds,
    )
    drafts = (
        DraftReconciler(gw)
        if settle_after_seconds is None
        else DraftReconciler(gw, settle_after_seconds=settle_after_seconds)
    )
    loops = Reconcilers(sandboxes, drafts)
    loops.detach = gw.driver.attach(sandboxes.observe)
    return loops
