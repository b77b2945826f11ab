"""WatchSandbox: stream a sandbox's status (and platform events) as it changes.

Subscribe to the store's change feed first, then read and send the row, then re-read it on
every hint about it (or a wildcard hint), so a change made on any replica reaches this
stream. A periodic re-read backs the feed up in case a hint is lost. The stream ends when the
row is gone, or, with ``stop_on_terminal``, when the sandbox reaches a terminal phase.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.base import PlatformEvent
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import status_for
from shellgate.controller.service.requests import find_named, single_workspace
from shellgate.store import ChangeEvent, StoreError

Sandbox = openshell_pb2.Sandbox
RESYNC_SECONDS = 5.0
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
    events = gw.events.follow(sandbox_id) if request.follow_events else None
    try:
        async with gw.store.subscribe() as feed:
            if request.follow_events and request.event_tail:
                for event in gw.events.tail(sandbox_id, request.event_tail):
                    yield _event_message(event)
            last_version = 0
            while True:
                current = await gw.repos.sandboxes.get(sandbox_id)
                if current is None:
                    return
                if follow_status and current.metadata.resource_version != last_version:
                    last_version = current.metadata.resource_version
                    yield openshell_pb2.SandboxStreamEvent(sandbox=current)
                    if request.stop_on_terminal and current.status.phase in TERMINAL_PHASES:
                        return
                async for item in _wait_for_change(gw, feed, sandbox_id, events):
                    yield item
    finally:
        if events is not None:
            gw.events.unfollow(sandbox_id, events)


async def _wait_for_change(
    gw: Gateway, feed: Any, sandbox_id: str, events: asyncio.Queue[PlatformEvent] | None
) -> AsyncIterator[openshell_pb2.SandboxStreamEvent]:
    """Yield platform events until a row hint for ``sandbox_id`` arrives (or a resync)."""
    deadline = time.monotonic() + RESYNC_SECONDS
    while (remaining := deadline - time.monotonic()) > 0:
        waiters: dict[asyncio.Task[Any], str] = {asyncio.ensure_future(feed.get()): "row"}
        if events is not None:
            waiters[asyncio.ensure_future(events.get())] = "event"
        try:
            done, _pending = await asyncio.wait(
                waiters, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
            )
        finally:  # also when the client goes away and this handler is cancelled
            await _cancel_unfinished(waiters)
        # Events first: one taken off its queue together with a row hint must still be sent.
        for task in sorted(done, key=lambda t: waiters[t] != "event"):
            if waiters[task] == "event":
                yield _event_message(task.result())
        if any(waiters[t] == "row" and _concerns(t.result(), sandbox_id, gw) for t in done):
            return


async def _cancel_unfinished(tasks: Iterable[asyncio.Task[Any]]) -> None:
    for task in tasks:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StoreError):
                await task


def _concerns(event: ChangeEvent, sandbox_id: str, gw: Gateway) -> bool:
    if event.id is None:
        return True
    if event.id != sandbox_id:
        return False
    if event.committed_at_ms:
        lag = max(0.0, (gw.clock_ms() - event.committed_at_ms) / 1000)
        gw.metrics.change_feed_lag.set(lag)
    return True
