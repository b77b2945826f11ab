"""What every handler and loop of one gateway process shares."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from google.protobuf.message import Message

from shellgate.api import datamodel_pb2
from shellgate.controller.drivers.base import ComputeDriver
from shellgate.controller.errors import not_found
from shellgate.controller.events import PlatformEventBus
from shellgate.controller.metrics import Metrics
from shellgate.reconcilers.errors import InvalidArgument
from shellgate.store import DEFAULT_WORKSPACE, Store, object_type_of

M = TypeVar("M", bound=Message)


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


def workspace_of(selector: datamodel_pb2.WorkspaceSelector) -> str | None:
    """The workspace a request names: empty means "default", ``all_workspaces`` means None."""
    if selector.HasField("all_workspaces"):
        return None
    return selector.workspace or DEFAULT_WORKSPACE


def single_workspace(selector: datamodel_pb2.WorkspaceSelector) -> str:
    """For requests about one object: ``all_workspaces`` falls back to "default"."""
    return workspace_of(selector) or DEFAULT_WORKSPACE


async def find_named(gw: Gateway, message_type: type[M], name: str, workspace: str) -> M:
    """The object called ``name`` in ``workspace``: INVALID_ARGUMENT without a name,
    NOT_FOUND when there is none."""
    if not name:
        raise InvalidArgument.single("name", "name is required")
    found = await gw.store.get_message_by_name(message_type, name, workspace)
    if found is None:
        raise not_found(object_type_of(message_type), name)
    return found
