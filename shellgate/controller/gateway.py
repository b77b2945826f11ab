"""What every handler and loop of one gateway process shares."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shellgate.controller.drivers.base import ComputeDriver
from shellgate.controller.limits import Limits, Slots
from shellgate.controller.metrics import Metrics
from shellgate.controller.platform_events import PlatformEventBus
from shellgate.store import Store


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Gateway:
    store: Store
    driver: ComputeDriver
    metrics: Metrics
    replica_id: str
    events: PlatformEventBus = field(default_factory=lambda: PlatformEventBus())
    clock_ms: Callable[[], int] = wall_clock_ms
    limits: Limits = field(default_factory=Limits)
    watch_slots: Slots = field(init=False)

    def __post_init__(self) -> None:
        self.watch_slots = Slots(self.limits.max_watch_streams)
