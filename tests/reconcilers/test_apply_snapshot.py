"""apply_snapshot: monotonic by driver revision, no-op when nothing changes, DELETING untouched."""

from __future__ import annotations

import pytest

from shellgate.api import openshell_pb2
from shellgate.reconcilers import (
    DRIVER_REVISION_ANNOTATION,
    apply_snapshot,
    is_stale,
    stored_driver_revision,
)
from shellgate.reconcilers.snapshot import DriverCondition, DriverSnapshot

from .helpers import P, cond, copy_of, sandbox, snap, stored_condition

NOW = 1_700_000_000_000
EARLIER = 1_600_000_000_000
READY_SNAP = snap(cond("Ready", "True", "DependenciesReady"), pod="pod-a")


def run(snapshot: DriverSnapshot, row: openshell_pb2.Sandbox, now_ms: int = NOW):
    """Apply like the store does: to a copy, reporting (result, changed)."""
    result = apply_snapshot(snapshot, now_ms)(copy_of(row))
    return result, result != row


@pytest.mark.parametrize(
    ("stored", "incoming", "applied"),
    [
        pytest.param(10, 9, False, id="older revision ignored"),
        pytest.param(10, 10, False, id="equal revision ignored"),
        pytest.param(10, 11, True, id="newer revision applied"),
        pytest.param(None, 1, True, id="first revision applied"),
        pytest.param(10, None, True, id="snapshot without revision applied unguarded"),
        pytest.param(None, None, True, id="no revision on either side"),
        pytest.param("garbage", 1, True, id="unparsable stored revision counts as none"),
        pytest.param(2**40, 2**40 + 1, True, id="large revisions compare as integers"),
        pytest.param(99, 100, True, id="compared as integers, not strings"),
    ],
)
def test_revision_guard(stored: int | str | None, incoming: int | None, applied: bool) -> None:
    row = sandbox(P.SANDBOX_PHASE_PROVISIONING, revision=stored)
    incoming_snapshot = snap(cond("Ready", "True"), pod="pod-a", revision=incoming)
    result, changed = run(incoming_snapshot, row)
    assert changed is applied
    if applied:
        assert result.status.phase == P.SANDBOX_PHASE_READY
        expected_annotation = (
            str(incoming)
            if incoming is not None
            else row.metadata.annotations.get(DRIVER_REVISION_ANNOTATION)
        )
        assert result.metadata.annotations.get(DRIVER_REVISION_ANNOTATION) == expected_annotation
    else:
        assert result == row


def test_lagging_replica_cannot_roll_ready_back() -> None:
    row = sandbox(P.SANDBOX_PHASE_PROVISIONING)
    ready, _ = run(snap(cond("Ready", "True"), revision=20), row)
    stale = snap(cond("Ready", "False", "DependenciesNotReady"), revision=19)
    result, changed = run(stale, ready)
    assert not changed
    assert result.status.phase == P.SANDBOX_PHASE_READY
    assert stored_driver_revision(result) == 20


def test_deleting_row_is_untouched_even_by_a_newer_snapshot() -> None:
    row = sandbox(P.SANDBOX_PHASE_DELETING, revision=5)
    result, changed = run(snap(cond("Ready", "True"), pod="pod-a", revision=6), row)
    assert not changed
    assert result == row


def test_deleting_row_is_untouched_by_an_unordered_snapshot() -> None:
    row = sandbox(P.SANDBOX_PHASE_DELETING)
    _, changed = run(snap(cond("Ready", "True"), revision=None), row)
    assert not changed


def test_a_newer_snapshot_of_the_same_state_records_only_its_revision() -> None:
    row = sandbox(P.SANDBOX_PHASE_PROVISIONING)
    first, changed = run(snap(cond("Ready", "True"), pod="pod-a", revision=3), row)
    assert changed
    again, changed_again = run(snap(cond("Ready", "True"), pod="pod-a", revision=4), first, NOW + 5)
    assert changed_again
    assert stored_driver_revision(again) == 4
    assert again.status == first.status


def test_a_coalesced_snapshot_still_fences_off_the_one_it_superseded() -> None:
    """Revisions 7, 8, 9 with 7 and 9 alike: a replica that saw only 9 (its queue coalesced
    8 away) records 9, so a lagging replica's 8 is stale, not a roll-back."""
    row = sandbox(P.SANDBOX_PHASE_PROVISIONING)
    at_7, _ = run(snap(cond("Ready", "True"), pod="pod-a", revision=7), row)
    at_9, _ = run(snap(cond("Ready", "True"), pod="pod-a", revision=9), at_7, NOW + 5)
    late_8, changed = run(snap(cond("Ready", "False", "PodNotReady"), revision=8), at_9, NOW + 9)
    assert not changed
    assert late_8.status.phase == P.SANDBOX_PHASE_READY


def test_unordered_snapshot_twice_is_a_noop_the_second_time() -> None:
    row = sandbox(P.SANDBOX_PHASE_PROVISIONING)
    snapshot = snap(cond("Ready", "True"), cond("Initialized", "True"), pod="pod-a")
    first, changed = run(snapshot, row, NOW)
    assert changed
    _, changed_again = run(snapshot, first, NOW + 60_000)
    assert not changed_again


def test_applied_status_fields() -> None:
    row = sandbox(P.SANDBOX_PHASE_PROVISIONING)
    snapshot = snap(
        cond("Ready", "False", "PodFailed", message="boom", time_ms=EARLIER),
        pod="pod-b",
        exit_code=3,
        revision=8,
    )
    result, _ = run(snapshot, row)
    assert result.status.phase == P.SANDBOX_PHASE_ERROR
    assert result.status.agent_pod == "pod-b"
    assert result.status.HasField("exit_code")
    assert result.status.exit_code == 3
    [condition] = result.status.conditions
    assert (condition.type, condition.status, condition.reason, condition.message) == (
        "Ready",
        "False",
        "PodFailed",
        "boom",
    )
    assert condition.transition_time.ToMilliseconds() == EARLIER
    assert result.metadata.annotations[DRIVER_REVISION_ANNOTATION] == "8"


def test_only_status_and_revision_change() -> None:
    row = sandbox(P.SANDBOX_PHASE_PROVISIONING, providers=["gh"])
    row.metadata.labels["team"] = "a"
    result, _ = run(READY_SNAP, row)
    assert result.spec == row.spec
    assert result.metadata.labels == row.metadata.labels
    assert (result.metadata.id, result.metadata.name, result.metadata.resource_version) == (
        row.metadata.id,
        row.metadata.name,
        row.metadata.resource_version,
    )


@pytest.mark.parametrize(
    ("stored", "incoming", "expected", "changed"),
    [
        pytest.param(None, 0, 0, True, id="exit code 0 is recorded"),
        pytest.param(None, 137, 137, True, id="exit code recorded"),
        pytest.param(1, None, 1, False, id="no exit code in the snapshot keeps the stored one"),
        pytest.param(1, 1, 1, False, id="same exit code is no change"),
        pytest.param(1, 2, 2, True, id="new exit code replaces the stored one"),
        pytest.param(None, None, None, False, id="no exit code anywhere"),
    ],
)
def test_exit_code(
    stored: int | None, incoming: int | None, expected: int | None, changed: bool
) -> None:
    row = sandbox(P.SANDBOX_PHASE_READY, conditions=[stored_condition("Ready", "True", time_ms=1)])
    row.status.agent_pod = "pod-a"
    if stored is not None:
        row.status.exit_code = stored
    result, did_change = run(
        snap(cond("Ready", "True", time_ms=1), pod="pod-a", exit_code=incoming), row
    )
    assert did_change is changed
    if expected is None:
        assert not result.status.HasField("exit_code")
    else:
        assert result.status.exit_code == expected


@pytest.mark.parametrize(
    ("stored_pod", "snapshot_pod"),
    [
        pytest.param("", "pod-a", id="pod appears"),
        pytest.param("pod-a", "pod-b", id="pod replaced"),
        pytest.param("pod-a", "", id="pod gone"),
    ],
)
def test_agent_pod_follows_the_instance(stored_pod: str, snapshot_pod: str) -> None:
    row = sandbox(
        P.SANDBOX_PHASE_READY,
        conditions=[stored_condition("Ready", "True", time_ms=1)],
        agent_pod=stored_pod,
    )
    result, changed = run(snap(cond("Ready", "True", time_ms=1), pod=snapshot_pod), row)
    assert changed
    assert result.status.agent_pod == snapshot_pod


@pytest.mark.parametrize(
    ("stored", "incoming", "expected_ms"),
    [
        pytest.param(
            stored_condition("Ready", "True", time_ms=EARLIER),
            cond("Ready", "True"),
            EARLIER,
            id="status unchanged, no driver time: stored time kept",
        ),
        pytest.param(
            stored_condition("Ready", "False", "Starting", time_ms=EARLIER),
            cond("Ready", "False", "DependenciesNotReady"),
            EARLIER,
            id="reason changed but status did not flip: stored time kept",
        ),
        pytest.param(
            stored_condition("Ready", "False", time_ms=EARLIER),
            cond("Ready", "True"),
            NOW,
            id="status flipped, no driver time: now",
        ),
        pytest.param(None, cond("Ready", "True"), NOW, id="new condition, no driver time: now"),
        pytest.param(
            stored_condition("Ready", "True", time_ms=EARLIER),
            cond("Ready", "True", time_ms=EARLIER + 1),
            EARLIER + 1,
            id="driver time wins",
        ),
        pytest.param(
            stored_condition("Ready", "False", time_ms=EARLIER),
            cond("Ready", "True", time_ms=EARLIER + 7),
            EARLIER + 7,
            id="flipped with driver time: driver time",
        ),
    ],
)
def test_condition_transition_time(
    stored: openshell_pb2.SandboxCondition | None, incoming: DriverCondition, expected_ms: int
) -> None:
    row = sandbox(P.SANDBOX_PHASE_PROVISIONING, conditions=[stored] if stored else [])
    result, _ = run(snap(incoming), row)
    [condition] = result.status.conditions
    assert condition.transition_time.ToMilliseconds() == expected_ms


def test_stored_condition_without_time_stays_without_time() -> None:
    row = sandbox(P.SANDBOX_PHASE_READY, conditions=[stored_condition("Ready", "True")])
    result, changed = run(snap(cond("Ready", "True")), row)
    assert not changed
    assert not result.status.conditions[0].HasField("transition_time")


def test_conditions_are_replaced_as_a_whole_in_snapshot_order() -> None:
    row = sandbox(
        P.SANDBOX_PHASE_PROVISIONING,
        conditions=[
            stored_condition("Old", "True", time_ms=1),
            stored_condition("Ready", "False", time_ms=2),
        ],
    )
    result, _ = run(snap(cond("Initialized", "True"), cond("Ready", "False", "Starting")), row)
    assert [c.type for c in result.status.conditions] == ["Initialized", "Ready"]
    assert result.status.conditions[1].transition_time.ToMilliseconds() == 2


def test_error_row_keeps_its_phase_but_shows_fresh_conditions() -> None:
    row = sandbox(
        P.SANDBOX_PHASE_ERROR, conditions=[stored_condition("Ready", "False", "PodFailed")]
    )
    result, changed = run(snap(cond("Ready", "True"), revision=4), row)
    assert changed
    assert result.status.phase == P.SANDBOX_PHASE_ERROR
    assert result.status.conditions[0].status == "True"


def test_a_snapshot_without_status_records_only_its_revision() -> None:
    row = sandbox(
        P.SANDBOX_PHASE_READY,
        conditions=[stored_condition("Ready", "True", time_ms=1)],
        agent_pod="pod-a",
        revision=3,
    )
    result, changed = run(snap(has_status=False, revision=4), row)
    assert changed  # only the revision: nothing else is known
    assert result.status == row.status
    assert stored_driver_revision(result) == 4


@pytest.mark.parametrize(
    ("phase", "snapshot", "expected"),
    [
        pytest.param(
            P.SANDBOX_PHASE_STOPPING,
            snap(cond("Suspended", "True", "PodTerminated")),
            P.SANDBOX_PHASE_STOPPED,
            id="stop finishes",
        ),
        pytest.param(
            P.SANDBOX_PHASE_STOPPING,
            snap(
                cond("Suspended", "False", "PodNotTerminated"),
                cond("Ready", "False", "SandboxSuspended"),
            ),
            P.SANDBOX_PHASE_STOPPING,
            id="agent-sandbox suspending is not ERROR",
        ),
        pytest.param(
            P.SANDBOX_PHASE_STOPPED,
            snap(cond("Ready", "True")),
            P.SANDBOX_PHASE_STOPPED,
            id="stopped stays stopped",
        ),
        pytest.param(
            P.SANDBOX_PHASE_STARTING,
            snap(cond("Ready", "True")),
            P.SANDBOX_PHASE_READY,
            id="start finishes",
        ),
        pytest.param(
            P.SANDBOX_PHASE_READY,
            snap(deleting=True),
            P.SANDBOX_PHASE_DELETING,
            id="deleted outside",
        ),
    ],
)
def test_phase_is_composed_with_the_stored_one(
    phase: int, snapshot: DriverSnapshot, expected: int
) -> None:
    result, _ = run(snapshot, sandbox(phase))
    assert result.status.phase == expected


def test_returns_the_object_it_was_given() -> None:
    row = sandbox(P.SANDBOX_PHASE_PROVISIONING)
    given = copy_of(row)
    assert apply_snapshot(READY_SNAP, NOW)(given) is given


@pytest.mark.parametrize(
    ("stored", "incoming", "stale"),
    [(10, 9, True), (10, 10, True), (10, 11, False), (None, 1, False), (10, None, False)],
)
def test_is_stale(stored: int | None, incoming: int | None, stale: bool) -> None:
    assert is_stale(snap(revision=incoming), sandbox(revision=stored)) is stale
