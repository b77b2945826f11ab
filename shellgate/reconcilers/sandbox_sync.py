"""The one decision of a sandbox reconcile: given the row and the driver's view, what to do.

``decide`` is pure: the caller reads the row (with its version and last write time), gathers
the driver's view, and carries out the returned ``Action`` with a write bound to the version
it read. Every input that can be stale is therefore checked by the store at write time, and
two replicas deciding at once cannot undo each other: the slower one's write is refused and it
decides again from the newer row.

The driver's view comes from one of three places:

- ``Reported`` by a watch event (``listed_at_ms`` None): applied whatever the row's age,
  because snapshots are ordered by driver revision and an older one changes nothing.
- ``Reported`` by the periodic resync's listing (``listed_at_ms`` set): ignored for a row
  written after the listing started, since the listing may predate that write.
- ``Reported`` or ``Absent`` after asking the driver for this one sandbox, which happens
  after the row was read and is therefore never older than it.
- ``Deleted``: a watch reported the object gone for good.

Decisions, in order: a deletion removes the row; a row without an object is an orphan (only
when resyncing: deleted through the driver unless already being deleted); a snapshot that
changes the row is applied (with the provisioning deadline advanced, ``provisioning``, and
followed by a start when a STARTING row's object confirms the stop that start had to make
first); an owner acts on a STOPPING/STARTING/DELETING row (drivers whose sandboxes only one
replica can touch learn of the intent this way); the provisioning deadline is stamped,
cleared or enforced; a resync repairs drift:
a missing object past the grace period (transitions become ERROR so the user sees why, other
rows are removed), or re-issues a transition that has not moved for ``stuck`` ms.

A replica that does not own the sandbox (drivers whose sandboxes one replica runs) passes no
view of its own and ``acts_on_intent=False``, so none of the repairs above can fire there;
when the owner is known to be gone (``owner_lost``), the row is reported, never removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from shellgate.api import openshell_pb2
from shellgate.reconcilers import provisioning
from shellgate.reconcilers.ownership import is_marked_owner_lost, mark_owner_lost
from shellgate.reconcilers.phase import (
    DELETING,
    STARTING,
    STOPPED,
    STOPPING,
    derive_backend_phase,
)
from shellgate.reconcilers.sandbox import (
    MISSING_TO_ERROR,
    apply_snapshot,
    is_marked_missing,
    is_stale,
    mark_compute_missing,
)
from shellgate.reconcilers.snapshot import DriverSnapshot

Sandbox = openshell_pb2.Sandbox

TRANSITIONS: dict[int, Literal["stop", "start", "delete"]] = {
    STOPPING: "stop",
    STARTING: "start",
    DELETING: "delete",
}


# ---- inputs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reported:
    """The driver has an object for the sandbox, in this state."""

    snapshot: DriverSnapshot
    resync: bool = False
    """True when it came from a resync (listing or a direct look), not a watch event."""
    listed_at_ms: int | None = None
    """When the listing it came from started; None when it is not older than the row."""


@dataclass(frozen=True, slots=True)
class Absent:
    """The driver was asked, after the row was read, and has no object for the sandbox."""


@dataclass(frozen=True, slots=True)
class Deleted:
    """A watch reported the driver's object deleted for good."""


View = Reported | Absent | Deleted | None
"""None: nothing is known of the driver's side (a change-feed hint only)."""


@dataclass(frozen=True, slots=True)
class Row:
    """The stored sandbox as read, with the version every write is bound to."""

    sandbox: Sandbox
    version: int
    updated_at_ms: int


@dataclass(frozen=True, slots=True)
class Thresholds:
    grace_ms: int
    """How long a row may lack its object before it is repaired (creates are in flight)."""
    stuck_ms: int
    """How long a transition may go unwritten before its driver call is re-issued."""
    provisioning_ms: int = 0
    """How long a sandbox may stay PROVISIONING or STARTING before it is ERROR (0: forever)."""


# ---- decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Write:
    """Write ``candidate`` at the version read; ``result`` names the repair for metrics.

    ``then`` is a driver call to make once the write succeeded: a resync that brings a stuck
    transition's status up to date still re-issues its driver call.
    """

    candidate: Sandbox
    result: Literal["applied", "resynced", "marked_error", "deadline_exceeded", "owner_lost"]
    then: CallDriver | None = None


@dataclass(frozen=True, slots=True)
class Remove:
    """Remove the row at the version read (its object is gone)."""

    result: Literal["applied", "removed"]


@dataclass(frozen=True, slots=True)
class CallDriver:
    """Ask the driver for what the row's phase says is under way (idempotent)."""

    verb: Literal["stop", "start", "delete"]
    result: Literal["intent", "reissued"]


@dataclass(frozen=True, slots=True)
class DeleteOrphan:
    """Delete a driver object whose row does not exist."""


@dataclass(frozen=True, slots=True)
class Nothing:
    """Nothing to do; ``result`` says why when a watch event was involved."""

    result: Literal["noop", "stale"] = "noop"


Action = Write | Remove | CallDriver | DeleteOrphan | Nothing


def decide(
    row: Row | None,
    view: View,
    now_ms: int,
    thresholds: Thresholds,
    *,
    acts_on_intent: bool,
    owner_lost: bool = False,
) -> Action:
    """The one action for this sandbox now (see the module docstring for the order).

    ``owner_lost``: another replica owns the sandbox and has stopped proving it is alive.
    """
    if isinstance(view, Deleted):
        return Remove("applied") if row is not None else Nothing()
    if row is None:
        if isinstance(view, Reported) and view.resync and not view.snapshot.deleting:
            return DeleteOrphan()
        return Nothing()
    if owner_lost:
        return _report_owner_lost(row, now_ms)
    if isinstance(view, Reported) and not _predates(view, row):
        candidate = _applied(row.sandbox, view.snapshot, now_ms)
        expired = provisioning.tick(candidate, now_ms, thresholds.provisioning_ms)
        wake = _wake(candidate, view.snapshot)
        if candidate != row.sandbox and view.resync:
            stuck = _stuck(Row(candidate, row.version, row.updated_at_ms), now_ms, thresholds)
            then = stuck if isinstance(stuck, CallDriver) else wake
            return Write(candidate, "deadline_exceeded" if expired else "resynced", then)
        if candidate != row.sandbox:
            return Write(candidate, "deadline_exceeded" if expired else "applied", wake)
        if not view.resync:
            return _intent(row, acts_on_intent) or wake or _unchanged(view.snapshot, row.sandbox)
    intent = _intent(row, acts_on_intent)
    if intent is not None:
        return intent
    clocked = _copy(row.sandbox)
    expired = provisioning.tick(clocked, now_ms, thresholds.provisioning_ms)
    if clocked != row.sandbox:
        return Write(clocked, "deadline_exceeded" if expired else "resynced")
    if isinstance(view, Absent):
        return _missing(row, now_ms, thresholds)
    if isinstance(view, Reported) and view.resync and not _predates(view, row):
        return _stuck(row, now_ms, thresholds)
    return Nothing()


QUIET_HORIZON_MS = 10 * 365 * 24 * 3600 * 1000
"""How far ahead ``quiet`` looks: longer than any threshold a deployment would set."""


def quiet(
    row: Row,
    view: View,
    now_ms: int,
    thresholds: Thresholds,
    *,
    acts_on_intent: bool,
) -> bool:
    """True when ``decide`` answers Nothing for this row and view now *and* at any later time.

    A resync pass may then skip the row (without decoding it) for as long as neither input
    changes: the row's version, the driver's view of it, who owns it and whether that owner
    is alive. Time is the only other input of ``decide``, and every rule that depends on it
    acts once a threshold is passed (the grace period, the stuck time, the provisioning
    deadline), never before; so Nothing now and Nothing at a time beyond every threshold
    means Nothing at every time in between. A view that predates the row is never quiet: a
    later listing would not predate it, and could change the answer.
    """
    now = decide(row, view, now_ms, thresholds, acts_on_intent=acts_on_intent)
    return isinstance(now, Nothing) and stays_quiet(
        row, view, now_ms, thresholds, acts_on_intent=acts_on_intent
    )


def stays_quiet(
    row: Row,
    view: View,
    now_ms: int,
    thresholds: Thresholds,
    *,
    acts_on_intent: bool,
) -> bool:
    """``quiet`` for a caller that already has Nothing from ``decide`` at ``now_ms``."""
    if isinstance(view, Reported) and _predates(view, row):
        return False
    later = now_ms + QUIET_HORIZON_MS
    return isinstance(decide(row, view, later, thresholds, acts_on_intent=acts_on_intent), Nothing)


def _predates(view: Reported, row: Row) -> bool:
    return view.listed_at_ms is not None and row.updated_at_ms > view.listed_at_ms


def _copy(sandbox: Sandbox) -> Sandbox:
    copy = Sandbox()
    copy.CopyFrom(sandbox)
    return copy


def _applied(sandbox: Sandbox, snapshot: DriverSnapshot, now_ms: int) -> Sandbox:
    return apply_snapshot(snapshot, now_ms)(_copy(sandbox))


def _wake(sandbox: Sandbox, snapshot: DriverSnapshot) -> CallDriver | None:
    """A start that had to stop the object first (its pod had ended) continues here.

    The row still wants to start, the object's spec says stopped, and the backend confirms
    the stop: only now may the driver set it running again, or the controller could still
    see the old pod. Every replica may ask; the driver's patch is idempotent.
    """
    stopped = snapshot.desired_running is False and derive_backend_phase(snapshot) == STOPPED
    if sandbox.status.phase == STARTING and stopped:
        return CallDriver("start", "intent")
    return None


def _unchanged(snapshot: DriverSnapshot, sandbox: Sandbox) -> Nothing:
    return Nothing("stale" if is_stale(snapshot, sandbox) else "noop")


def _intent(row: Row, acts_on_intent: bool) -> CallDriver | None:
    verb = TRANSITIONS.get(row.sandbox.status.phase)
    if acts_on_intent and verb is not None:
        return CallDriver(verb, "intent")
    return None


def _missing(row: Row, now_ms: int, thresholds: Thresholds) -> Action:
    if now_ms - row.updated_at_ms < thresholds.grace_ms:
        return Nothing()  # a create may still be on its way to the driver
    if row.sandbox.status.phase in MISSING_TO_ERROR:
        copy = Sandbox()
        copy.CopyFrom(row.sandbox)
        return Write(mark_compute_missing(now_ms)(copy), "marked_error")
    if is_marked_missing(row.sandbox):
        return Nothing()  # kept so the user sees why, until they delete it
    return Remove("removed")


def _report_owner_lost(row: Row, now_ms: int) -> Action:
    if is_marked_owner_lost(row.sandbox):
        return Nothing()
    copy = Sandbox()
    copy.CopyFrom(row.sandbox)
    return Write(mark_owner_lost(copy, now_ms), "owner_lost")


def _stuck(row: Row, now_ms: int, thresholds: Thresholds) -> Action:
    verb = TRANSITIONS.get(row.sandbox.status.phase)
    if verb is not None and now_ms - row.updated_at_ms >= thresholds.stuck_ms:
        return CallDriver(verb, "reissued")
    return Nothing()
