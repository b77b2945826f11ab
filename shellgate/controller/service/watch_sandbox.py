"""WatchSandbox: stream a sandbox's status (and platform events) as it changes.

Watch the row on the store's change feed first (``Store.watch_row``), then read and send the
row, then re-read it whenever the feed says it may have changed, so a change made on any
replica reaches this stream. The feed routes a hint to the watches of its row only, so a write
costs the streams of that sandbox and nothing for the thousands watching others; a hint the
feed may have missed (another process's write on SQLite, a Postgres LISTEN reconnect) arrives
as a wildcard that wakes every stream once, which is why no periodic re-read is needed. The
stream ends when the row is gone, or, with ``stop_on_terminal``, when the sandbox reaches a
terminal phase.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.base import PlatformEvent
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import status_for
from shellgate.controller.service.requests import find_named, single_workspace
from shellgate.store import ChangeEvent

Sandbox = openshell_pb2.Sandbox
TERMINAL_PHASES = frozenset(
    {
        openshell_pb2.SANDBOX_PHASE_READY,
        openshell_pb2.SANDBOX_PHASE_ERROR,
        openshell_pb2.SANDBOX_PHASE_STOPPED,
        openshell_pb2.SANDBOX_PHASE_COMPLETED,
    }
)


def _event_message(event: PlatformEvent) -> openshell_pb2.SandboxStreamEvent:
    when = timestamp_pb2.Timestamp()
    when.FromMilliseconds(event.timestamp_ms)
    return openshell_pb2.SandboxStreamEvent(
        event=openshell_pb2.PlatformEvent(
            event_time=when,
            source=event.source,
            type=event.type,
            reason=event.reason,
            message=event.message,
            metadata={"count": str(event.count)},
        )
    )


async def watch_sandbox(
    gw: Gateway, request: openshell_pb2.WatchSandboxRequest, context: Any
) -> AsyncIterator[openshell_pb2.SandboxStreamEvent]:
    if not gw.watch_slots.take():
        await context.abort(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"this replica serves at most {gw.watch_slots.capacity} watch streams; retry later",
        )
    gw.metrics.watch_streams.inc()
    try:
        async for event in _stream(gw, request):
            yield event
    except Exception as exc:
        await context.abort_with_status(status_for(exc, "WatchSandbox"))
    finally:
        gw.metrics.watch_streams.dec()
        gw.watch_slots.give_back()


async def _stream(
    gw: Gateway, request: openshell_pb2.WatchSandboxRequest
) -> AsyncIterator[openshell_pb2.SandboxStreamEvent]:
    workspace = single_workspace(request.workspace_scope)
    found = await find_named(gw, Sandbox, request.sandbox, workspace, "sandbox")
    sandbox_id = found.metadata.id
    follow_status = request.follow_status or not request.follow_events
    async with gw.store.watch_row(sandbox_id) as watch:
        # Watching before the first read: a change after the read always sets the flag.
        events = gw.events.follow(sandbox_id, watch.wake) if request.follow_events else None
        try:
            if events is not None and request.event_tail:
                for event in gw.events.tail(sandbox_id, request.event_tail):
                    yield _event_message(event)
            last_version = 0
            row_changed = True
            while True:
                if row_changed:
                    current = await gw.repos.sandboxes.get(sandbox_id)
                    if current is None:
                        return
                    if follow_status and current.metadata.resource_version != last_version:
                        last_version = current.metadata.resource_version
                        yield openshell_pb2.SandboxStreamEvent(sandbox=current)
                        if request.stop_on_terminal and current.status.phase in TERMINAL_PHASES:
                            return
                await watch.wait()
                # Events first: those queued before a row change must still be sent.
                while events is not None and not events.empty():
                    yield _event_message(events.get_nowait())
                row_changed = watch.take_change()
                if row_changed:
                    _record_feed_lag(gw, watch.last_event)
        finally:
            if events is not None:
                gw.events.unfollow(sandbox_id, events)


def _record_feed_lag(gw: Gateway, event: ChangeEvent | None) -> None:
    """How long the last hint about this row took from its commit to this replica."""
    if event is not None and event.committed_at_ms:
        lag = max(0.0, (gw.clock_ms() - event.committed_at_ms) / 1000)
        gw.metrics.change_feed_lag.set(lag)
