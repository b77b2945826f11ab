"""Sandbox mutations for ``update_message_cas``: driver snapshots, lifecycle, providers.

Each public function returns a ``Mutation``: the store calls it with a fresh copy of the
stored sandbox on every CAS attempt, so it must decide from that copy alone. It edits the copy
in place and returns it; returning it unchanged means "nothing to write" (no version bump, no
notification), and raising a ``DomainError`` aborts the write. That is what lets every replica
handle the same event for the cost of one write.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from shellgate.api import openshell_pb2
from shellgate.reconcilers.annotations import DRIVER_REVISION_ANNOTATION
from shellgate.reconcilers.errors import FailedPrecondition, InvalidArgument
from shellgate.reconcilers.phase import (
    COMPLETED,
    DELETING,
    ERROR,
    PROVISIONING,
    READY,
    STARTING,
    STOPPED,
    STOPPING,
    UNKNOWN,
    UNSPECIFIED,
    Phase,
    compose_phase,
    derive_backend_phase,
    phase_name,
)
from shellgate.reconcilers.snapshot import DriverCondition, DriverSnapshot
from shellgate.reconcilers.validation import (
    MAX_PROVIDERS,
    require_valid,
    validate_object_name,
    validate_sandbox_spec,
)

__all__ = [
    "DRIVER_REVISION_ANNOTATION",
    "Mutation",
    "apply_snapshot",
    "attach_provider",
    "begin_delete",
    "begin_start",
    "begin_stop",
    "detach_provider",
    "is_stale",
    "stored_driver_revision",
]

Sandbox = openshell_pb2.Sandbox
SandboxCondition = openshell_pb2.SandboxCondition
Mutation = Callable[[Sandbox], Sandbox]
"""What ``update_message_cas`` applies: edit the given copy in place and return it."""


# --- driver snapshots -------------------------------------------------------------------------


def stored_driver_revision(sandbox: Sandbox) -> int | None:
    """The driver revision of the last snapshot applied, or None if none was recorded.

    An annotation that is not a decimal integer (hand-edited, or from an older build) counts
    as "none": the next snapshot is then applied rather than the sandbox being frozen.
    """
    raw = sandbox.metadata.annotations.get(DRIVER_REVISION_ANNOTATION, "")
    return int(raw) if raw.isascii() and raw.isdecimal() else None


def is_stale(snapshot: DriverSnapshot, sandbox: Sandbox) -> bool:
    """A snapshot no newer than the one applied must not roll the status back.

    A snapshot without a revision cannot be ordered and is applied in arrival order. Public so
    that a caller can tell "ignored as stale" from "nothing to change" after a no-op write.
    """
    if snapshot.revision is None:
        return False
    stored = stored_driver_revision(sandbox)
    return stored is not None and snapshot.revision <= stored


def _to_condition(
    condition: DriverCondition, previous: SandboxCondition | None, now_ms: int
) -> SandboxCondition:
    """Convert one driver condition, choosing its transition time.

    The driver's own time wins when it has one. Otherwise a condition whose status did not
    flip keeps the stored time (so re-applying the same state changes nothing), and a new or
    flipped condition gets ``now_ms``.
    """
    converted = SandboxCondition(
        type=condition.type,
        status=condition.status,
        reason=condition.reason,
        message=condition.message,
    )
    if condition.last_transition_time_ms:
        converted.transition_time.FromMilliseconds(condition.last_transition_time_ms)
    elif previous is not None and previous.status == condition.status:
        if previous.HasField("transition_time"):
            converted.transition_time.CopyFrom(previous.transition_time)
    else:
        converted.transition_time.FromMilliseconds(now_ms)
    return converted


def _convert_conditions(
    conditions: Iterable[DriverCondition], stored: Iterable[SandboxCondition], now_ms: int
) -> list[SandboxCondition]:
    """The snapshot's conditions in its order, matched to stored ones by type."""
    previous: dict[str, SandboxCondition] = {}
    for condition in stored:
        previous.setdefault(condition.type, condition)
    return [_to_condition(c, previous.get(c.type), now_ms) for c in conditions]


def _status_target(
    snapshot: DriverSnapshot, sandbox: Sandbox, now_ms: int
) -> tuple[list[SandboxCondition], Phase, str]:
    """Conditions, phase and agent pod the snapshot implies for this row.

    A snapshot without status says nothing about conditions or the pod, so it keeps the
    stored ones, as HEAD keeps the previous phase.
    """
    status = sandbox.status
    backend = derive_backend_phase(snapshot)
    phase = compose_phase(status.phase, backend, snapshot)
    if not snapshot.has_status:
        return list(status.conditions), phase, status.agent_pod
    conditions = _convert_conditions(snapshot.conditions, status.conditions, now_ms)
    return conditions, phase, snapshot.instance.pod_name


def apply_snapshot(snapshot: DriverSnapshot, now_ms: int) -> Mutation:
    """Turn a driver snapshot into sandbox status (``phase`` rules), monotonically by driver
    revision.

    The row is returned unchanged when it is DELETING (the deletion is finished by a
    version-bound delete elsewhere; a snapshot never resurrects it) or when the snapshot is
    not newer than the last one applied. Otherwise it sets the conditions, the composed phase,
    the agent pod, the exit code (when the snapshot has one) and the revision.

    A newer snapshot that changes nothing else still records its revision. The work queue
    coalesces events, so a replica may apply revision 9 straight over 7 (same status); if 9
    were not recorded, a lagging replica could then apply the superseded 8 over it and roll
    the status back. One write per such snapshot, by whichever replica gets there first.

    Unlike HEAD, an ERROR row still gets fresh conditions (its phase stays ERROR), so users
    can see what the backend reports now.
    """

    def mutate(sandbox: Sandbox) -> Sandbox:
        if sandbox.status.phase == DELETING or is_stale(snapshot, sandbox):
            return sandbox
        conditions, phase, agent_pod = _status_target(snapshot, sandbox, now_ms)
        status = sandbox.status
        exit_code_changes = snapshot.exit_code is not None and (
            not status.HasField("exit_code") or status.exit_code != snapshot.exit_code
        )
        unchanged = (
            list(status.conditions) == conditions
            and status.phase == phase
            and status.agent_pod == agent_pod
            and not exit_code_changes
        )
        if unchanged:
            _record_revision(sandbox, snapshot)
            return sandbox
        del status.conditions[:]
        status.conditions.extend(conditions)
        status.phase = phase
        status.agent_pod = agent_pod
        if snapshot.exit_code is not None:
            status.exit_code = snapshot.exit_code
        _record_revision(sandbox, snapshot)
        return sandbox

    return mutate


def _record_revision(sandbox: Sandbox, snapshot: DriverSnapshot) -> None:
    if snapshot.revision is not None:
        sandbox.metadata.annotations[DRIVER_REVISION_ANNOTATION] = str(snapshot.revision)


# --- lifecycle --------------------------------------------------------------------------------

_STOPPABLE = frozenset({PROVISIONING, READY, STARTING, UNKNOWN, UNSPECIFIED, COMPLETED})
_STARTABLE = frozenset({STOPPED, ERROR, COMPLETED})
_ALREADY_STARTING_OR_RUNNING = frozenset({STARTING, READY, PROVISIONING, UNKNOWN, UNSPECIFIED})


def _refuse(action: str, phase: int, detail: str = "") -> FailedPrecondition:
    """A FAILED_PRECONDITION naming the phase, in the message and machine-readably."""
    name = phase_name(phase)
    suffix = f": {detail}" if detail else ""
    return FailedPrecondition(f"cannot {action} a sandbox in phase {name}{suffix}", name)


def _set_phase(sandbox: Sandbox, phase: Phase) -> Sandbox:
    """Lifecycle requests change ``status.phase`` only; drivers and snapshots do the rest."""
    sandbox.status.phase = phase
    return sandbox


def begin_stop() -> Mutation:
    """Move a running sandbox to STOPPING; the driver's stop and snapshots finish the job.

    Already STOPPING or STOPPED: unchanged (stop is idempotent). DELETING cannot be stopped
    (it is going away) and ERROR cannot either (nothing runs; delete or start it instead).
    COMPLETED may be stopped: its backend may still hold resources.
    """

    def mutate(sandbox: Sandbox) -> Sandbox:
        phase = sandbox.status.phase
        if phase in (STOPPING, STOPPED):
            return sandbox
        if phase in _STOPPABLE:
            return _set_phase(sandbox, STOPPING)
        raise _refuse("stop", phase)

    return mutate


def begin_start() -> Mutation:
    """Move a stopped sandbox to STARTING; snapshots take it on to READY (or ERROR).

    STOPPED, ERROR and COMPLETED may be started: starting an ERROR sandbox is how a user
    restarts a crashed one without losing its spec and id. Already starting or running
    (STARTING, READY, PROVISIONING, UNKNOWN, UNSPECIFIED): unchanged. STOPPING is refused
    until the stop has finished, and DELETING always is.
    """

    def mutate(sandbox: Sandbox) -> Sandbox:
        phase = sandbox.status.phase
        if phase in _ALREADY_STARTING_OR_RUNNING:
            return sandbox
        if phase in _STARTABLE:
            return _set_phase(sandbox, STARTING)
        if phase == STOPPING:
            raise _refuse("start", phase, "still stopping")
        raise _refuse("start", phase)

    return mutate


def begin_delete() -> Mutation:
    """Move any sandbox to DELETING, the first step of the public DeleteSandbox.

    Idempotent: an already DELETING row is unchanged, so a repeated delete writes nothing.
    """

    def mutate(sandbox: Sandbox) -> Sandbox:
        if sandbox.status.phase == DELETING:
            return sandbox
        return _set_phase(sandbox, DELETING)

    return mutate


# --- providers --------------------------------------------------------------------------------


def _dedupe(names: Iterable[str]) -> list[str]:
    """Names in first-seen order without repeats."""
    return list(dict.fromkeys(names))


def _provider_list_edit(name: str, edit: Callable[[Sandbox, str], None]) -> Mutation:
    """A mutation of ``spec.providers``; the name is checked once, before any I/O. Whether a
    run changed the list is what the store's outcome reports (``written``)."""
    require_valid(validate_object_name(name, "provider_name"))

    def mutate(sandbox: Sandbox) -> Sandbox:
        edit(sandbox, name)
        return sandbox

    return mutate


def _attach(sandbox: Sandbox, name: str) -> None:
    """Append ``name`` unless present; refuse a 33rd provider; validate the candidate spec."""
    current = _dedupe(sandbox.spec.providers)
    if name in current:
        return
    if len(current) >= MAX_PROVIDERS:
        raise InvalidArgument.single(
            "spec.providers",
            f"spec.providers exceeds maximum of {MAX_PROVIDERS} providers: "
            f"cannot attach {name!r} to a sandbox that already has {len(current)}",
        )
    candidate = openshell_pb2.SandboxSpec()
    candidate.CopyFrom(sandbox.spec)
    del candidate.providers[:]
    candidate.providers.extend([*current, name])
    require_valid(validate_sandbox_spec(candidate))
    sandbox.spec.CopyFrom(candidate)


def _detach(sandbox: Sandbox, name: str) -> None:
    """Remove every copy of ``name``; absent means nothing to do."""
    if name not in sandbox.spec.providers:
        return
    kept = [p for p in sandbox.spec.providers if p != name]
    del sandbox.spec.providers[:]
    sandbox.spec.providers.extend(kept)


def attach_provider(name: str) -> Mutation:
    """Attach a provider by name (AttachSandboxProvider).

    Already attached: unchanged (nothing is written). The 32-provider limit is checked
    against the freshly read row, so a list filled by a racing writer is an INVALID_ARGUMENT
    with nothing written, never a silent "not attached". The
    whole candidate spec is validated before it replaces the stored one. Raises
    ``InvalidArgument`` at once when ``name`` is empty or longer than 253 bytes.
    """
    return _provider_list_edit(name, _attach)


def detach_provider(name: str) -> Mutation:
    """Detach a provider by name (DetachSandboxProvider), removing every copy of it.

    Not attached: unchanged, and unlike the reference nothing is
    written. Raises ``InvalidArgument`` at once when ``name`` is empty or too long.
    """
    return _provider_list_edit(name, _detach)


# --- compute resource missing (the sweep) ----------------------------------------------------

MISSING_REASON = "ComputeResourceMissing"
MISSING_MESSAGE = "the sandbox's compute resource no longer exists"
MISSING_TO_ERROR = frozenset({STOPPING, STOPPED, STARTING})


def mark_compute_missing(now_ms: int) -> Mutation:
    """STOPPING, STOPPED or STARTING → ERROR with ``Ready=False/ComputeResourceMissing``.

    Decided on the row given (the store passes a fresh copy), so a row that moved on to another
    phase meanwhile is returned unchanged and nothing is written. The new Ready condition goes
    first (the phase is derived from the first Ready condition); other types are kept.
    """

    def mutate(sandbox: Sandbox) -> Sandbox:
        status = sandbox.status
        if status.phase not in MISSING_TO_ERROR:
            return sandbox
        ready = openshell_pb2.SandboxCondition(
            type="Ready", status="False", reason=MISSING_REASON, message=MISSING_MESSAGE
        )
        ready.transition_time.FromMilliseconds(now_ms)
        kept = [c for c in status.conditions if c.type != "Ready"]
        del status.conditions[:]
        status.conditions.extend([ready, *kept])
        status.phase = ERROR
        return sandbox

    return mutate


def is_marked_missing(sandbox: Sandbox) -> bool:
    """An ERROR row the sweep itself marked: its backend is known to be gone."""
    return sandbox.status.phase == ERROR and any(
        c.type == "Ready" and c.reason == MISSING_REASON for c in sandbox.status.conditions
    )
