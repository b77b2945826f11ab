"""The compute-driver interface, used by the API handlers and by the watch loop alike.

A driver owns sandboxes in its own world (child processes, Kubernetes objects) and reports
what it sees as ``DriverEvent``s. It never touches the store: the reconcile loop applies its
snapshots through ``update_message_cas`` and the handlers write rows before calling it.

Every operation is idempotent by sandbox id, because any replica may repeat it: creating
what already exists with the same id succeeds, deleting what is gone returns False.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

from shellgate.api import openshell_pb2
from shellgate.reconcilers.snapshot import DriverSnapshot


class DriverError(Exception):
    """The driver could not do what was asked; the message says why."""


class DriverConflict(DriverError):
    """The driver's world holds something else under this sandbox's name."""


class DriverNotOwner(DriverError):
    """Another replica's driver owns this sandbox (local driver only); it will act on it."""


@dataclass(frozen=True, slots=True)
class SnapshotEvent:
    snapshot: DriverSnapshot


@dataclass(frozen=True, slots=True)
class DeletedEvent:
    """The driver's object for ``sandbox_id`` is gone for good."""

    sandbox_id: str


@dataclass(frozen=True, slots=True)
class PlatformEvent:
    """A human-readable event about a sandbox (Kubernetes Event, process exit...); not stored."""

    sandbox_id: str
    type: str  # "Normal" | "Warning"
    reason: str
    message: str
    timestamp_ms: int
    source: str = ""
    count: int = 1


DriverEvent = SnapshotEvent | DeletedEvent | PlatformEvent


class ComputeDriver(Protocol):
    name: str
    routes_by_owner: bool
    """True when only one replica's driver can act on a sandbox (the local driver): then
    every replica follows the store and acts on the transitional rows it owns."""

    @property
    def watch_ready(self) -> bool:
        """True while the driver's event stream is connected (readiness)."""

    async def start(self) -> None:
        """Connect; after this, ``events()`` yields."""

    async def close(self) -> None: ...

    async def create_sandbox(self, sandbox: openshell_pb2.Sandbox) -> None:
        """Create the sandbox's backing resources; success if they exist with the same id."""

    async def delete_sandbox(self, sandbox_id: str) -> bool:
        """Start removing it; True if something existed, False if nothing did.

        The store row is removed when a ``DeletedEvent`` for the id arrives.
        """

    def owns(self, sandbox_id: str) -> bool:
        """True when this replica's driver may act on the sandbox (always, for drivers that
        do not route by owner; for the local driver: only on positive evidence that it is its
        own, never because no other replica's claim is visible from here)."""

    async def stop_sandbox(self, sandbox_id: str) -> None: ...

    async def start_sandbox(self, sandbox_id: str) -> None: ...

    async def get_sandbox(self, sandbox_id: str) -> DriverSnapshot | None: ...

    async def list_sandboxes(self) -> list[DriverSnapshot]: ...

    def events(self) -> AsyncIterator[DriverEvent]:
        """Every event from now on, in order, for as long as the driver runs (diagnostics)."""

    def attach(self, sink: Callable[[DriverEvent], None]) -> Callable[[], None]:
        """Call ``sink`` synchronously for every event from now on (how the gateway
        consumes them: the sink coalesces per sandbox and never blocks the driver); returns a
        function that detaches it."""
