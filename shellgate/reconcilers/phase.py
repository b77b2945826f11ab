"""Sandbox phase: what the driver says (derivation) and what we store (composition).

``derive_backend_phase`` reads one driver snapshot the way the reference gateway does, so
clients see the same phases from either, and goes further where the agent-sandbox controller
needs it: conditions written for an older spec generation are ignored, and the spec's intent
(running or stopped) decides which conditions mean what, since releases differ in what they
write (v0.4.x has no Suspended condition; v0.5.0-v0.5.3 never clear it after a resume).
``compose_phase`` then combines it with the stored phase, applying HEAD's lifecycle
stickiness: a sandbox the user is stopping or has stopped must not bounce back to READY or
PROVISIONING because the backend has not caught up yet, and an ERROR stays an ERROR until
someone acts on it.

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
FINISHED_CONDITION = "Finished"
POD_SUCCEEDED = "podsucceeded"
POD_NOT_OWNED = "podnotowned"
STALE_WHEN_RUNNING: frozenset[str] = frozenset({"sandboxsuspended"})
"""Ready=False reasons that, on an object asked to run, can only be left from before the start
(agent-sandbox writes SandboxSuspended only while the spec says Suspended)."""

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


def current_conditions(snapshot: DriverSnapshot) -> tuple[DriverCondition, ...]:
    """The conditions written for the object's current spec.

    A controller stamps each condition with the generation it observed. After a spec change
    (a stop or a start), the conditions still describe the old spec until the controller
    catches up; read as current, a Ready=True written before a stop would end the stop at
    once. A condition without an observed generation, or a snapshot without a generation,
    cannot be told apart and counts as current.
    """
    generation = snapshot.generation
    if not generation:
        return snapshot.conditions
    return tuple(
        c
        for c in snapshot.conditions
        if not c.observed_generation or c.observed_generation >= generation
    )


def derive_backend_phase(snapshot: DriverSnapshot) -> Phase:
    """The phase the driver alone implies.

    The order: no status, deletion, then the spec's intent (``desired_running``) with the
    conditions written for the current spec. A snapshot without status is UNKNOWN even when
    it is being deleted, because in the reference the deleting flag lives inside the status.

    When the object asks to be stopped, only the stop's progress matters
    (``_derive_stopping``). When it asks to run, a Suspended condition is history: agent-sandbox
    v0.5.0-v0.5.3 never clear Suspended=True after a resume, so reading it would keep a
    started sandbox stopped forever. Drivers without an intent in their objects (the local
    driver) report Suspended only while stopped, and it is read as before.
    """
    if not snapshot.has_status:
        return UNKNOWN
    if snapshot.deleting:
        return DELETING
    conditions = current_conditions(snapshot)
    if snapshot.desired_running is False:
        return _derive_stopping(snapshot, conditions)
    finished = _first(conditions, FINISHED_CONDITION)
    if finished is not None and _is(finished.status, "True"):
        return COMPLETED if finished.reason.lower() == POD_SUCCEEDED else ERROR
    suspended = _first(conditions, SUSPENDED_CONDITION)
    if snapshot.desired_running is None and suspended is not None and _is(suspended.status, "True"):
        return STOPPED
    return _derive_running(snapshot, _first(conditions, READY_CONDITION))


def _derive_running(snapshot: DriverSnapshot, ready: DriverCondition | None) -> Phase:
    """The first Ready condition, for an object that is meant to run."""
    if ready is None:
        return PROVISIONING
    if _is(ready.status, "True"):
        # v1alpha1 reports Ready=True with no pod while replicas is 0; that is not running.
        return PROVISIONING if snapshot.workload_count == 0 else READY
    if not _is(ready.status, "False"):
        return PROVISIONING
    reason = ready.reason.lower()
    if reason == POD_SUCCEEDED:
        return COMPLETED
    if snapshot.desired_running and reason in STALE_WHEN_RUNNING:
        return PROVISIONING  # written before the start reached the controller
    return ERROR if is_terminal_reason(ready.reason) else PROVISIONING


def _derive_stopping(snapshot: DriverSnapshot, conditions: tuple[DriverCondition, ...]) -> Phase:
    """The object asks to be stopped: STOPPED once the controller confirms it, else STOPPING.

    - v1beta1 (agent-sandbox v0.5.x): Suspended=True at the current generation. Since v0.5.4
      Suspended=False/PodTerminating (or Unknown) means the pod is still going; a pod the
      sandbox does not own (PodNotOwned) is never deleted by the controller, which is ERROR.
    - v1alpha1 (v0.4.x) writes no Suspended condition; it reports Ready=True "replicas is 0"
      and ``status.replicas`` 0. A current condition plus no workload confirms the stop.
    """
    suspended = _first(conditions, SUSPENDED_CONDITION)
    if suspended is not None:
        if _is(suspended.status, "True"):
            return STOPPED
        if suspended.reason.lower() == POD_NOT_OWNED:
            return ERROR
        return STOPPING
    if snapshot.workload_count == 0 and _first(conditions, READY_CONDITION) is not None:
        return STOPPED
    return STOPPING


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
    - STARTING stays STARTING until the backend is READY, ERROR or COMPLETED, so stale "stopped"
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
        return backend if backend in (READY, ERROR, COMPLETED) else STARTING
    if not snapshot.has_status:
        return current
    return backend
