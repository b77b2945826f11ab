"""A compute driver for handler tests: records calls, emits the snapshots a test asks for.

It follows the same contract as the real drivers (idempotent by id, events fanned out to
every ``events()`` caller) and can be told to fail a create, so rollback paths are testable.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.base import (
    DeletedEvent,
    DriverError,
    DriverEvent,
    SnapshotEvent,
)
from shellgate.reconcilers.snapshot import DriverCondition, DriverSnapshot


def ready(sandbox_id: str, revision: int | None) -> DriverSnapshot:
    return DriverSnapshot(
        sandbox_id, revision, (DriverCondition("Ready", "True", "DependenciesReady"),)
    )


def suspended(sandbox_id: str, revision: int | None) -> DriverSnapshot:
    return DriverSnapshot(
        sandbox_id,
        revision,
        (
            DriverCondition("Ready", "False", "SandboxSuspended"),
            DriverCondition("Suspended", "True", "PodTerminated"),
        ),
    )


class FakeDriver:
    name = "fake"
    routes_by_owner = False

    def __init__(self, *, auto_ready: bool = True) -> None:
        self.sandboxes: dict[str, openshell_pb2.Sandbox] = {}
        self.calls: list[tuple[str, str]] = []
        self.fail_create = False
        self.auto_ready = auto_ready
        self._revisions = itertools.count(1)
        self._queues: set[asyncio.Queue[DriverEvent]] = set()
        self._sinks: list[Callable[[DriverEvent], None]] = []
        self._started = False

    @property
    def watch_ready(self) -> bool:
        return self._started

    async def start(self) -> None:
        self._started = True

    async def close(self) -> None:
        self._started = False

    def emit(self, event: DriverEvent) -> None:
        for sink in tuple(self._sinks):
            sink(event)
        for queue in tuple(self._queues):
            queue.put_nowait(event)

    def revision(self) -> int:
        return next(self._revisions)

    async def create_sandbox(self, sandbox: openshell_pb2.Sandbox) -> None:
        self.calls.append(("create", sandbox.metadata.id))
        if self.fail_create:
            raise DriverError("injected create failure")
        self.sandboxes[sandbox.metadata.id] = sandbox
        if self.auto_ready:
            self.emit(SnapshotEvent(ready(sandbox.metadata.id, self.revision())))

    async def delete_sandbox(self, sandbox_id: str) -> bool:
        self.calls.append(("delete", sandbox_id))
        existed = self.sandboxes.pop(sandbox_id, None) is not None
        if existed:
            self.emit(DeletedEvent(sandbox_id))
        return existed

    def owns(self, sandbox_id: str) -> bool:
        return True

    async def stop_sandbox(self, sandbox_id: str) -> None:
        self.calls.append(("stop", sandbox_id))
        if self.auto_ready:
            self.emit(SnapshotEvent(suspended(sandbox_id, self.revision())))

    async def start_sandbox(self, sandbox_id: str) -> None:
        self.calls.append(("start", sandbox_id))
        if self.auto_ready:
            self.emit(SnapshotEvent(ready(sandbox_id, self.revision())))

    async def get_sandbox(self, sandbox_id: str) -> DriverSnapshot | None:
        return ready(sandbox_id, None) if sandbox_id in self.sandboxes else None

    async def list_sandboxes(self) -> list[DriverSnapshot]:
        return [ready(sandbox_id, None) for sandbox_id in self.sandboxes]

    def attach(self, sink: Callable[[DriverEvent], None]) -> Callable[[], None]:
        self._sinks.append(sink)
        return lambda: self._sinks.remove(sink) if sink in self._sinks else None

    async def events(self) -> AsyncIterator[DriverEvent]:
        queue: asyncio.Queue[DriverEvent] = asyncio.Queue()
        self._queues.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.discard(queue)
