"""Compute drivers: the ``ComputeDriver`` interface and its implementations.

``local`` runs each sandbox as a child process of the gateway (development only, no isolation).
"""

from shellgate.controller.drivers.base import (
    ComputeDriver,
    DeletedEvent,
    DriverConflict,
    DriverError,
    DriverEvent,
    PlatformEvent,
    SnapshotEvent,
)
from shellgate.controller.drivers.local import LocalDriver

__all__ = [
    "ComputeDriver",
    "DeletedEvent",
    "DriverConflict",
    "DriverError",
    "DriverEvent",
    "LocalDriver",
    "PlatformEvent",
    "SnapshotEvent",
]
