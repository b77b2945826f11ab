"""Builders shared by the reconciler tests: sandboxes, snapshots and exact-size payloads."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from google.protobuf.message import Message

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.reconcilers import DRIVER_REVISION_ANNOTATION
from shellgate.reconcilers.snapshot import DriverCondition, DriverSnapshot, InstanceFacts

M = TypeVar("M", bound=Message)
P = openshell_pb2
ALL_PHASES = [
    P.SANDBOX_PHASE_UNSPECIFIED,
    P.SANDBOX_PHASE_PROVISIONING,
    P.SANDBOX_PHASE_READY,
    P.SANDBOX_PHASE_ERROR,
    P.SANDBOX_PHASE_DELETING,
    P.SANDBOX_PHASE_UNKNOWN,
    P.SANDBOX_PHASE_STOPPING,
    P.SANDBOX_PHASE_STOPPED,
    P.SANDBOX_PHASE_STARTING,
    P.SANDBOX_PHASE_COMPLETED,
]


def name_of(phase: int) -> str:
    return openshell_pb2.SandboxPhase.Name(phase).removeprefix("SANDBOX_PHASE_")


def cond(
    type_: str, status: str, reason: str = "", *, message: str = "", time_ms: int = 0
) -> DriverCondition:
    return DriverCondition(type_, status, reason, message, time_ms)


def snap(
    *conditions: DriverCondition,
    revision: int | None = None,
    deleting: bool = False,
    has_status: bool = True,
    pod: str = "",
    exit_code: int | None = None,
) -> DriverSnapshot:
    return DriverSnapshot(
        sandbox_id="sb-1",
        revision=revision,
        conditions=tuple(conditions),
        deleting=deleting,
        has_status=has_status,
        instance=InstanceFacts(pod_name=pod),
        exit_code=exit_code,
    )


def stored_condition(
    type_: str, status: str, reason: str = "", *, time_ms: int | None = None
) -> openshell_pb2.SandboxCondition:
    condition = openshell_pb2.SandboxCondition(type=type_, status=status, reason=reason)
    if time_ms is not None:
        condition.transition_time.FromMilliseconds(time_ms)
    return condition


def sandbox(
    phase: int = P.SANDBOX_PHASE_PROVISIONING,
    *,
    conditions: Iterable[openshell_pb2.SandboxCondition] = (),
    revision: int | str | None = None,
    providers: Iterable[str] = (),
    agent_pod: str = "",
    name: str = "sb",
) -> openshell_pb2.Sandbox:
    message = openshell_pb2.Sandbox()
    message.metadata.id = "sb-1"
    message.metadata.name = name
    message.metadata.workspace = "default"
    message.metadata.resource_version = 7
    message.spec.log_level = "info"
    message.spec.providers.extend(providers)
    message.status.phase = phase  # type: ignore[assignment]
    message.status.conditions.extend(conditions)
    message.status.agent_pod = agent_pod
    if revision is not None:
        message.metadata.annotations[DRIVER_REVISION_ANNOTATION] = str(revision)
    return message


def provider(
    name: str = "gh",
    *,
    type_: str = "github",
    credentials: dict[str, str] | None = None,
    config: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
) -> datamodel_pb2.Provider:
    message = datamodel_pb2.Provider(type=type_)
    message.metadata.id = "prov-1"
    message.metadata.name = name
    message.metadata.workspace = "default"
    message.metadata.resource_version = 3
    message.credentials.update({"TOKEN": "secret"} if credentials is None else credentials)
    message.config.update(config or {})
    message.metadata.labels.update(labels or {})
    return message


def copy_of(message: M) -> M:
    copied = type(message)()
    copied.CopyFrom(message)
    return copied


def fill_to(size_of: Callable[[int], int], target: int) -> int:
    """The padding length n for which size_of(n) == target (sizes grow by one per unit)."""
    n = max(0, target - 32)
    while size_of(n) < target:
        n += 1
    assert size_of(n) == target, f"no padding gives exactly {target} bytes"
    return n
