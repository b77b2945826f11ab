"""The driver watch loop: every replica applies every driver event through CAS.

A snapshot becomes ``update_message_cas(Sandbox, id, apply_snapshot(snapshot))``. The
reconciler returns the row unchanged for a stale or no-op snapshot, so N replicas handling the
same event cost one write, not N. A ``DeletedEvent`` removes the row with ``delete_if`` bound to
the version just read. Platform events go to the in-memory bus only. Errors are logged and
counted; the loop never dies on one event (the sweep repairs what it missed).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.base import (
    DeletedEvent,
    DriverEvent,
    PlatformEvent,
    SnapshotEvent,
)
from shellgate.controller.gateway import Gateway
from shellgate.reconcilers import sandbox as sandbox_rules
from shellgate.reconcilers.snapshot import DriverSnapshot
from shellgate.store import NotFound, StoreError

log = logging.getLogger(__name__)

Sandbox = openshell_pb2.Sandbox
RESTART_DELAY_SECONDS = 2.0


async def run_watch_loop(gw: Gateway, events: AsyncIterator[DriverEvent] | None = None) -> None:
    """Consume the driver's events until cancelled; reopen the stream if it ends.

    ``events`` is a stream opened before the driver started, so nothing it emitted while
    starting is missed. Each (re)opened stream is followed by a resync from the driver's list.
    """
    while True:
        stream = events or gw.driver.events()
        events = None
        try:
            await resync(gw)
            async for event in stream:
                await handle_event(gw, event)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("driver event stream failed; reopening in %.0f s", RESTART_DELAY_SECONDS)
        await asyncio.sleep(RESTART_DELAY_SECONDS)


async def handle_event(gw: Gateway, event: DriverEvent) -> str:
    """Apply one event; returns the outcome counted in ``shellgate_driver_events_total``."""
    started = time.perf_counter()
    try:
        if isinstance(event, SnapshotEvent):
            result = await apply_snapshot(gw, event.snapshot)
        elif isinstance(event, DeletedEvent):
            result = await finalize_deleted(gw, event.sandbox_id)
        else:
            gw.events.publish(event)
            result = "applied"
    except StoreError as exc:
        log.warning("could not apply a driver event for %s: %s", _sandbox_id(event), exc)
        result = "error"
    except Exception:  # one bad event must not stop the loop; the sweep repairs it later
        log.exception("driver event for %s failed", _sandbox_id(event))
        result = "error"
    gw.metrics.driver_events.labels(driver=gw.driver.name, result=result).inc()
    reconcile_result = "error" if result == "error" else "success"
    gw.metrics.reconcile.labels(controller="driver-watch", result=reconcile_result).inc()
    gw.metrics.reconcile_duration.labels(controller="driver-watch").observe(
        time.perf_counter() - started
    )
    return result


async def resync(gw: Gateway) -> None:
    """Apply what the driver reports now (a watch that was down may have missed events)."""
    for snapshot in await gw.driver.list_sandboxes():
        await handle_event(gw, SnapshotEvent(snapshot))


def _sandbox_id(event: DriverEvent) -> str:
    return event.snapshot.sandbox_id if isinstance(event, SnapshotEvent) else event.sandbox_id


async def apply_snapshot(gw: Gateway, snapshot: DriverSnapshot) -> str:
    """'applied' when written, 'stale' when older than what is stored, else 'noop'."""
    mutation = sandbox_rules.apply_snapshot(snapshot, gw.clock_ms())
    try:
        outcome = await gw.store.update_message_cas(Sandbox, snapshot.sandbox_id, mutation)
    except NotFound:
        return "noop"  # the store is authoritative: a snapshot never creates a row
    if outcome.written:
        return "applied"
    return "stale" if sandbox_rules.is_stale(snapshot, outcome.message) else "noop"


async def finalize_deleted(gw: Gateway, sandbox_id: str) -> str:
    """The driver's object is gone: remove the row, bound to the version we read."""
    removed = await gw.remove_sandbox(sandbox_id)
    if removed:
        log.info("sandbox %s removed: its compute resources are gone", sandbox_id)
    return {True: "applied", False: "noop", None: "error"}[removed]


__all__ = ["PlatformEvent", "apply_snapshot", "finalize_deleted", "handle_event", "run_watch_loop"]
