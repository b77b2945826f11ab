"""Sandbox phase: what the driver says (derivation) and what we store (composition).

``derive_backend_phase`` reads one driver snapshot the way the reference gateway does, so
clients see the same phases from either. ``compose_phase`` then combines it with the stored
phase, applying HEAD's lifecycle stickiness: a sandbox the user is stopping or has stopped
must not bounce back to READY or PROVISIONING because the backend has not caught up yet, and
an ERROR stays an ERROR until someone acts on it.

shellgate has no supervisor sessions, so a backend READY means READY (as in the reference's
merged CAS PR); there is no "waiting for supervisor session" step.
"""

from __future__ import annotations

from collections.abc import Iterable

from shellgate.api import openshell_pb2
from shellgate.reconcilers.snapshot import DriverCondition, DriverSnapshot

Phase = openshell_pb2.SandboxPhase
"""A ``SandboxPhase`` enum value (an int at run time)."""

UNSPECIFIED = openshell_pb2.SANDBOX_PHASE_UNSPECIFIED
PROVISIONING = openshell_pb2.SANDBOX_PHASE_PROVISIONING
READY = openshell_pb2.SANDBOX_PHASE_READY
ERROR = openshell_pb2.SANDBOX_PHASE_ERROR
DELETING = openshell_pb2.SANDBOX_PHASE_DELETING
UNKNOWN = openshell_pb2.SANDBOX_PHASE_UNKNOWN
STOPPING = openshell_pb2.SANDBOX_PHASE_STOPPING
STOPPED = openshell_pb2.SANDBOX_PHASE_STOPPED
STARTING = openshell_pb2.SANDBOX_PHASE_STARTING
COMPLETED = openshell_pb2.SANDBOX_PHASE_COMPLETED

READY_CONDITION = "Ready"
SUSPENDED_CONDITION = "Suspended"

TRANSIENT_REASONS: frozenset[str] = frozenset(
    reason.lower()
    for reason in (
        "ReconcilerError",
        "DependenciesNotReady",
        "Starting",
        "ContainerStarting",
        "HealthCheckStarting",
        "InspectFailed",
        "SupervisorNotConnected",
        "ContainerCreated",
    )
)
"""Ready=False reasons that mean "not yet" rather than "failed" (lower-cased, HEAD's set)."""

STOPPED_REASONS: frozenset[str] = frozenset({"containerexited", "containerstopped"})
"""Ready=False reasons that finish a stop: the workload is gone."""

STILL_STOPPING_REASONS: frozenset[str] = frozenset({"podterminating", "podnotterminated"})
"""Suspended=False reasons that mean the backend is still tearing the workload down."""


def phase_name(phase: int) -> str:
    """The enum name of a phase ("SANDBOX_PHASE_READY"), or the number for an unknown value."""
    try:
        return openshell_pb2.SandboxPhase.Name(phase)
    except ValueError:
        return str(phase)


def is_terminal_reason(reason: str) -> bool:
    """A Ready=False reason is terminal unless it is one of the transient ones.

    The comparison ignores case: drivers disagree on capitalisation, and a mismatch would turn
    a harmless "starting" into a sticky ERROR.
    """
    return reason.lower() not in TRANSIENT_REASONS


def _first(conditions: Iterable[DriverCondition], type_: str) -> DriverCondition | None:
    """The first condition of exactly this type; the reference ignores later duplicates."""
    return next((c for c in conditions if c.type == type_), None)


def _is(value: str, expected: str) -> bool:
    """Condition statuses are compared case-insensitively ("true" from some drivers)."""
    return value.lower() == expected.lower()


def derive_backend_phase(snapshot: DriverSnapshot) -> Phase:
    """The phase the driver alone implies, as the reference derives it (HEAD, with Suspended).

    The order matters and follows the reference: no status, deletion, suspension, then the
    first Ready condition. A snapshot without status is UNKNOWN even when it is being deleted,
    because in the reference the deleting flag lives inside the status.
    """
    if not snapshot.has_status:
        return UNKNOWN
    if snapshot.deleting:
        return DELETING
    suspended = _first(snapshot.conditions, SUSPENDED_CONDITION)
    if suspended is not None and _is(suspended.status, "True"):
        return STOPPED
    ready = _first(snapshot.conditions, READY_CONDITION)
    if ready is None:
        return PROVISIONING
    if _is(ready.status, "True"):
        return READY
    if _is(ready.status, "False"):
        return ERROR if is_terminal_reason(ready.reason) else PROVISIONING
    return PROVISIONING


def _stop_finished(backend: Phase, snapshot: DriverSnapshot) -> bool:
    """The backend reports the workload gone: suspended, or the container exited/stopped."""
    if backend == STOPPED:
        return True
    ready = _first(snapshot.conditions, READY_CONDITION)
    return (
        ready is not None and _is(ready.status, "False") and ready.reason.lower() in STOPPED_REASONS
    )


def _still_stopping(snapshot: DriverSnapshot) -> bool:
    """agent-sandbox is suspending: Suspended=False while the pod is still terminating.

    In that state it also reports Ready=False/SandboxSuspended, which is a terminal reason;
    this check runs before ERROR may pass so that a stop in progress never becomes ERROR.
    """
    suspended = _first(snapshot.conditions, SUSPENDED_CONDITION)
    return (
        suspended is not None
        and _is(suspended.status, "False")
        and suspended.reason.lower() in STILL_STOPPING_REASONS
    )


def _compose_stopping(backend: Phase, snapshot: DriverSnapshot) -> Phase:
    """From STOPPING only STOPPED or ERROR can follow; everything else is "not done yet"."""
    if _stop_finished(backend, snapshot):
        return STOPPED
    if _still_stopping(snapshot):
        return STOPPING
    return ERROR if backend == ERROR else STOPPING


def compose_phase(current: Phase, backend: Phase, snapshot: DriverSnapshot) -> Phase:
    """The phase to store, given the stored phase and the backend's (HEAD's stickiness).

    - ERROR is sticky: only a user action (start, delete) leaves it.
    - STOPPING becomes STOPPED when the backend is stopped or its Ready condition is False
      with ContainerExited/ContainerStopped; stays STOPPING while agent-sandbox reports
      Suspended=False with PodTerminating/PodNotTerminated; otherwise only ERROR passes.
    - STOPPED stays STOPPED: a stopped sandbox restarts only through ``begin_start``.
    - STARTING stays STARTING until the backend is READY or ERROR, so stale "stopped"
      conditions seen while the backend wakes up do not undo the start.
    - A snapshot without status keeps the stored phase (HEAD), since it says nothing.
    - Otherwise the backend phase is stored as is.
    """
    if current == ERROR:
        return ERROR
    if current == STOPPING:
        return _compose_stopping(backend, snapshot)
    if current == STOPPED:
        return STOPPED
    if current == STARTING:
        return backend if backend in (READY, ERROR) else STARTING
    if not snapshot.has_status:
        return current
    return backend
