"""What every handler and loop of one gateway process shares."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shellgate.api.openshell_pb2 import Sandbox
from shellgate.controller.drivers.base import ComputeDriver
from shellgate.controller.limits import Limits, Slots
from shellgate.controller.metrics import Metrics
from shellgate.controller.platform_events import PlatformEventBus
from shellgate.reconcilers.ownership import owner_of
from shellgate.store import Repositories, Store
from shellgate.store.secrets import SecretSealer


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Gateway:
    store: Store
    driver: ComputeDriver
    metrics: Metrics
    replica_id: str
    sealer: SecretSealer
    """Seals provider credentials before they are stored (``--encryption-key-file``)."""
    events: PlatformEventBus = field(default_factory=lambda: PlatformEventBus())
    clock_ms: Callable[[], int] = wall_clock_ms
    limits: Limits = field(default_factory=Limits)
    auth_modes: tuple[str, ...] = ("none",)
    """How callers authenticate (GetGatewayInfo); set by ``start_grpc`` from its arguments."""
    grpc_address: str = ""
    """Where other replicas reach this one's gRPC server (recorded in its heartbeat row)."""
    watch_slots: Slots = field(init=False)
    exec_slots: Slots = field(init=False)
    repos: Repositories = field(init=False)

    def __post_init__(self) -> None:
        self.watch_slots = Slots(self.limits.max_watch_streams)
        self.exec_slots = Slots(self.limits.max_exec_sessions)
        self.repos = Repositories(self.store, self.sealer)

    def owned_elsewhere(self, sandbox: Sandbox) -> bool:
        """True when the row names another replica as the one whose driver runs the sandbox:
        then this replica must not call its own driver for it (its driver knows nothing of the
        sandbox and would answer "nothing there"); the owner acts on what the row says."""
        if not self.driver.routes_by_owner:
            return False
        owner = owner_of(sandbox)
        return owner is not None and owner != self.replica_id

    def owns(self, sandbox_id: str, sandbox: Sandbox | None) -> bool:
        """True when this replica may act on the sandbox through its driver: always for a
        driver any replica can use; else when the row names this replica, or, for a row that
        names nobody (made before owners were recorded) or no row at all, when the driver has
        positive evidence that the sandbox is its own."""
        return self.owns_by(sandbox_id, owner_of(sandbox) if sandbox is not None else None)

    def owns_by(self, sandbox_id: str, owner: str | None) -> bool:
        """``owns`` for a row that names ``owner`` (None: nobody), without the row itself:
        a resync pass that remembers a row's owner asks this without decoding it again."""
        if not self.driver.routes_by_owner:
            return True
        if owner is not None:
            return owner == self.replica_id
        return self.driver.owns(sandbox_id)

    async def remove_sandbox_at(self, sandbox_id: str, version: int) -> bool:
        """Remove the sandbox row at ``version`` with what it owns (the repository's cascade),
        then its in-memory platform events; False if it was not ours to remove."""
        removed = await self.repos.sandboxes.remove_at(sandbox_id, version)
        if removed:
            self.events.forget(sandbox_id)
        return removed

    async def remove_sandbox(self, sandbox_id: str) -> bool | None:
        """Remove the sandbox row at whatever version it has now (see
        ``SandboxRepository.remove``); its platform events go unless every attempt lost."""
        removed = await self.repos.sandboxes.remove(sandbox_id)
        if removed is not None:
            self.events.forget(sandbox_id)
        return removed
