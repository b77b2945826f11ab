"""What every handler and loop of one gateway process shares."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shellgate.controller.drivers.base import ComputeDriver
from shellgate.controller.limits import Limits, Slots
from shellgate.controller.metrics import Metrics
from shellgate.controller.platform_events import PlatformEventBus
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
    watch_slots: Slots = field(init=False)
    repos: Repositories = field(init=False)

    def __post_init__(self) -> None:
        self.watch_slots = Slots(self.limits.max_watch_streams)
        self.repos = Repositories(self.store, self.sealer)

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
