"""``sandbox_sync.decide``: the one decision of a sandbox reconcile, as a table."""

from __future__ import annotations

import pytest

from shellgate.api import openshell_pb2 as P
from shellgate.reconcilers.annotations import OWNER_REPLICA_ANNOTATION
from shellgate.reconcilers.ownership import OWNER_LOST_REASON
from shellgate.reconcilers.sandbox import DRIVER_REVISION_ANNOTATION, MISSING_REASON
from shellgate.reconcilers.sandbox_sync import (
    Absent,
    Action,
    CallDriver,
    Deleted,
    DeleteOrphan,
    Nothing,
    Remove,
    Reported,
    Row,
    Thresholds,
    View,
    Write,
    decide,
    quiet,
)
from shellgate.reconcilers.snapshot import DriverCondition, DriverSnapshot

NOW = 1_000_000
LIMITS = Thresholds(grace_ms=300_000, stuck_ms=60_000)
OLD = NOW - 3_600_000  # written long before: past every threshold
FRESH = NOW - 1_000  # written a second ago: inside every threshold


def ready(revision: int | None = 7, *, deleting: bool = False) -> DriverSnapshot:
    return DriverSnapshot(
        "id-1", revision, (DriverCondition("Ready", "True", "DependenciesReady"),), deleting
    )


def row(phase: int, *, updated: int = OLD, revision: int | None = None) -> Row:
    sandbox = P.Sandbox()
    sandbox.metadata.id = "id-1"
    sandbox.metadata.name = "s"
    sandbox.status.phase = phase
    if phase == P.SANDBOX_PHASE_ERROR:
        sandbox.status.conditions.add(type="Ready", status="False", reason=MISSING_REASON)
    if revision is not None:
        sandbox.metadata.annotations[DRIVER_REVISION_ANNOTATION] = str(revision)
    return Row(sandbox, 3, updated)


def kind(action: Action) -> tuple[str, str]:
    """The action's type and result, for the table."""
    if isinstance(action, Write):
        then = f" then {action.then.verb}" if action.then is not None else ""
        return ("write" + then, action.result)
    if isinstance(action, Remove):
        return ("remove", action.result)
    if isinstance(action, CallDriver):
        return (action.verb, action.result)
    if isinstance(action, DeleteOrphan):
        return ("delete-orphan", "orphan_deleted")
    assert isinstance(action, Nothing)
    return ("nothing", action.result)


EVENT = Reported(ready())
LISTED_BEFORE = Reported(ready(None), resync=True, listed_at_ms=NOW - 10)
LOOKED = Reported(ready(None), resync=True)
PROV, RDY, STOPPING = P.SANDBOX_PHASE_PROVISIONING, P.SANDBOX_PHASE_READY, P.SANDBOX_PHASE_STOPPING
STARTING, STOPPED = P.SANDBOX_PHASE_STARTING, P.SANDBOX_PHASE_STOPPED
DELETING, ERROR = P.SANDBOX_PHASE_DELETING, P.SANDBOX_PHASE_ERROR

CASES: list[tuple[str, Row | None, View, bool, tuple[str, str]]] = [
    # watch events
    ("event applies", row(PROV), EVENT, False, ("write", "applied")),
    (
        "event older than stored",
        row(RDY, revision=9),
        Reported(ready(8)),
        False,
        ("nothing", "stale"),
    ),
    (
        "event changes nothing",
        row(PROV, revision=9),
        Reported(ready(9)),
        False,
        ("nothing", "stale"),
    ),
    ("event without a row", None, EVENT, False, ("nothing", "noop")),
    ("event never resurrects DELETING", row(DELETING), EVENT, False, ("nothing", "noop")),
    ("owner acts on DELETING", row(DELETING), EVENT, True, ("delete", "intent")),
    ("deleted removes the row", row(RDY, updated=FRESH), Deleted(), False, ("remove", "applied")),
    ("deleted removes even a stopped row", row(STOPPED), Deleted(), False, ("remove", "applied")),
    ("deleted without a row", None, Deleted(), False, ("nothing", "noop")),
    # change-feed hints (no driver view)
    ("hint, owner, STOPPING", row(STOPPING, updated=FRESH), None, True, ("stop", "intent")),
    ("hint, owner, STARTING", row(STARTING, updated=FRESH), None, True, ("start", "intent")),
    ("hint, not owner-routed", row(STOPPING), None, False, ("nothing", "noop")),
    ("hint, owner, READY", row(RDY), None, True, ("nothing", "noop")),
    # resync: listed or looked-up snapshots
    ("listing resyncs", row(PROV), LISTED_BEFORE, False, ("write", "resynced")),
    (
        "listing older than the row",
        row(PROV, updated=NOW - 5),
        LISTED_BEFORE,
        False,
        ("nothing", "noop"),
    ),
    ("look resyncs", row(PROV, updated=FRESH), LOOKED, False, ("write", "resynced")),
    ("stuck STOPPING reissued", row(STOPPING), LOOKED, False, ("write then stop", "resynced")),
    ("young STOPPING resynced", row(STOPPING, updated=FRESH), LOOKED, False, ("write", "resynced")),
    (
        "stuck STOPPING, status current",
        row(STOPPING, revision=None),
        Reported(DriverSnapshot("id-1", None, ()), resync=True),
        False,
        ("stop", "reissued"),
    ),
    ("stuck DELETING reissued", row(DELETING), LOOKED, False, ("delete", "reissued")),
    ("orphan deleted", None, LOOKED, False, ("delete-orphan", "orphan_deleted")),
    (
        "orphan being deleted",
        None,
        Reported(ready(None, deleting=True), resync=True),
        False,
        ("nothing", "noop"),
    ),
    # resync: the driver has nothing
    ("missing READY removed", row(RDY), Absent(), False, ("remove", "removed")),
    ("missing DELETING removed", row(DELETING), Absent(), False, ("remove", "removed")),
    ("missing STOPPED marked", row(STOPPED), Absent(), False, ("write", "marked_error")),
    ("missing STARTING marked", row(STARTING), Absent(), False, ("write", "marked_error")),
    ("missing within grace", row(RDY, updated=FRESH), Absent(), False, ("nothing", "noop")),
    ("marked error is kept", row(ERROR), Absent(), False, ("nothing", "noop")),
    ("missing but owner acts first", row(STOPPING), Absent(), True, ("stop", "intent")),
]


@pytest.mark.parametrize(
    ("current", "view", "acts", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_decide(current: Row | None, view: View, acts: bool, expected: tuple[str, str]) -> None:
    assert kind(decide(current, view, NOW, LIMITS, acts_on_intent=acts)) == expected


def test_writes_are_decided_on_a_copy() -> None:
    current = row(STOPPED)
    action = decide(current, Absent(), NOW, LIMITS, acts_on_intent=False)
    assert isinstance(action, Write)
    assert action.candidate.status.phase == ERROR
    assert current.sandbox.status.phase == STOPPED  # the row read is left as it was


# ---- a sandbox whose owner replica is gone -------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "stored_phase"),
    [(RDY, P.SANDBOX_PHASE_UNKNOWN), (STOPPED, P.SANDBOX_PHASE_UNKNOWN), (DELETING, DELETING)],
    ids=["ready-becomes-unknown", "stopped-becomes-unknown", "deleting-keeps-its-intent"],
)
def test_a_lost_owner_is_reported_never_removed(phase: int, stored_phase: int) -> None:
    current = row(phase)
    current.sandbox.metadata.annotations[OWNER_REPLICA_ANNOTATION] = "r1"
    action = decide(current, None, NOW, LIMITS, acts_on_intent=False, owner_lost=True)
    assert kind(action) == ("write", "owner_lost")
    assert isinstance(action, Write)
    ready_condition = action.candidate.status.conditions[0]
    assert (ready_condition.type, ready_condition.status) == ("Ready", "Unknown")
    assert ready_condition.reason == OWNER_LOST_REASON and "'r1'" in ready_condition.message
    assert action.candidate.status.phase == stored_phase
    assert current.sandbox.status.phase == phase  # decided on a copy


def test_a_row_already_reported_is_not_written_again() -> None:
    current = row(RDY)
    first = decide(current, None, NOW, LIMITS, acts_on_intent=False, owner_lost=True)
    assert isinstance(first, Write)
    again = Row(first.candidate, current.version + 1, NOW)
    assert kind(decide(again, None, NOW, LIMITS, acts_on_intent=False, owner_lost=True)) == (
        "nothing",
        "noop",
    )


def test_the_owners_next_snapshot_clears_the_report() -> None:
    reported = decide(
        row(RDY, revision=6), None, NOW, LIMITS, acts_on_intent=False, owner_lost=True
    )
    assert isinstance(reported, Write)
    back = decide(
        Row(reported.candidate, 4, NOW), Reported(ready(7)), NOW, LIMITS, acts_on_intent=True
    )
    assert isinstance(back, Write)
    assert back.candidate.status.phase == RDY
    assert [c.reason for c in back.candidate.status.conditions] == ["DependenciesReady"]


def test_without_a_view_a_non_owner_never_removes_or_marks() -> None:
    """A non-owner passes no view of its own: no grace period can turn into a removal."""
    for phase in (RDY, STOPPED, DELETING, STARTING):
        assert kind(decide(row(phase), None, NOW, LIMITS, acts_on_intent=False)) == (
            "nothing",
            "noop",
        )


# ---- a start that had to stop first; the provisioning deadline -------------------------------

DEADLINE = Thresholds(grace_ms=300_000, stuck_ms=60_000, provisioning_ms=600_000)


def stopped_object(revision: int) -> DriverSnapshot:
    suspended = DriverCondition("Suspended", "True", "PodTerminated")
    return DriverSnapshot("id-1", revision, (suspended,), desired_running=False)


def test_a_confirmed_stop_under_a_starting_row_asks_the_driver_to_start() -> None:
    starting = row(P.SANDBOX_PHASE_STARTING, revision=4)
    action = decide(starting, Reported(stopped_object(5)), NOW, LIMITS, acts_on_intent=False)
    assert kind(action) == ("write then start", "applied")
    same = row(P.SANDBOX_PHASE_STARTING, revision=5)
    same.sandbox.status.conditions.add(type="Suspended", status="True", reason="PodTerminated")
    again = decide(same, Reported(stopped_object(6)), NOW, LIMITS, acts_on_intent=False)
    assert kind(again) == ("write then start", "applied")  # the newer revision is recorded


@pytest.mark.parametrize("phase", [P.SANDBOX_PHASE_STOPPED, P.SANDBOX_PHASE_STOPPING])
def test_a_confirmed_stop_under_other_rows_starts_nothing(phase: int) -> None:
    action = decide(row(phase), Reported(stopped_object(5)), NOW, LIMITS, acts_on_intent=False)
    assert not isinstance(action, CallDriver)
    assert not (isinstance(action, Write) and action.then is not None)


def test_provisioning_is_stamped_then_expires_without_a_new_event() -> None:
    provisioning = row(P.SANDBOX_PHASE_PROVISIONING, updated=FRESH)
    stamped = decide(provisioning, None, NOW, DEADLINE, acts_on_intent=False)
    assert kind(stamped) == ("write", "resynced")
    assert isinstance(stamped, Write)
    assert stamped.candidate.status.provisioning.deadline.ToMilliseconds() == NOW + 600_000
    later = Row(stamped.candidate, 4, NOW)
    assert kind(decide(later, None, NOW + 599_999, DEADLINE, acts_on_intent=False)) == (
        "nothing",
        "noop",
    )
    expired = decide(later, None, NOW + 600_000, DEADLINE, acts_on_intent=False)
    assert kind(expired) == ("write", "deadline_exceeded")
    assert isinstance(expired, Write)
    assert expired.candidate.status.phase == P.SANDBOX_PHASE_ERROR


def test_without_a_deadline_nothing_is_stamped() -> None:
    provisioning = row(P.SANDBOX_PHASE_PROVISIONING, updated=FRESH)
    assert kind(decide(provisioning, None, NOW, LIMITS, acts_on_intent=False)) == (
        "nothing",
        "noop",
    )


# ---- quiet: nothing now and at any later time ---------------------------------------------------

LISTED = Reported(ready(7), resync=True, listed_at_ms=NOW - 10)
DEADLINE = Thresholds(grace_ms=300_000, stuck_ms=60_000, provisioning_ms=600_000)


@pytest.mark.parametrize(
    ("case", "the_row", "view", "limits", "acts", "expected"),
    [
        ("ready, listed as applied", row(P.SANDBOX_PHASE_READY, revision=7), LISTED, LIMITS,
         True, True),
        ("ready, a newer listing", row(P.SANDBOX_PHASE_READY, revision=6), LISTED, LIMITS,
         True, False),
        ("listing predates the row", row(P.SANDBOX_PHASE_READY, revision=7, updated=NOW),
         LISTED, LIMITS, True, False),
        ("stopping, not yet stuck", row(P.SANDBOX_PHASE_STOPPING, revision=7, updated=FRESH),
         Reported(ready(7), resync=True, listed_at_ms=NOW), LIMITS, False, False),
        ("provisioning before its deadline", row(P.SANDBOX_PHASE_PROVISIONING, updated=FRESH),
         None, DEADLINE, False, False),
        ("provisioning without a deadline limit", row(P.SANDBOX_PHASE_PROVISIONING), None,
         LIMITS, False, True),
        ("missing, inside the grace period", row(P.SANDBOX_PHASE_READY, updated=FRESH),
         Absent(), LIMITS, True, False),
        ("missing and marked ERROR", row(P.SANDBOX_PHASE_ERROR), Absent(), LIMITS, True, True),
        ("another replica's ready row", row(P.SANDBOX_PHASE_READY), None, LIMITS, False, True),
    ],
)  # fmt: skip
def test_quiet(
    case: str, the_row: Row, view: View, limits: Thresholds, acts: bool, expected: bool
) -> None:
    assert quiet(the_row, view, NOW, limits, acts_on_intent=acts) is expected, case
