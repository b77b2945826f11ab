"""The provisioning deadline: stamped on entry, ERROR at expiry with the backend's reason."""

from __future__ import annotations

import pytest

from shellgate.api import openshell_pb2 as P
from shellgate.reconcilers.provisioning import DEADLINE_REASON, deadline_ms, tick

from .helpers import stored_condition


def sandbox(phase: int, *conditions: P.SandboxCondition) -> P.Sandbox:
    built = P.Sandbox()
    built.status.phase = phase
    built.status.conditions.extend(conditions)
    return built


@pytest.mark.parametrize("phase", [P.SANDBOX_PHASE_PROVISIONING, P.SANDBOX_PHASE_STARTING])
def test_stamped_once_then_expires_into_error_with_the_backends_reason(phase: int) -> None:
    refused = stored_condition("Ready", "False", "ReconcilerError")
    refused.message = "Error seen: pods is forbidden: exceeded quota"
    row = sandbox(phase, refused, stored_condition("PodScheduled", "False", "Unschedulable"))
    assert tick(row, 1_000, 500) is False
    assert deadline_ms(row) == 1_500
    assert tick(row, 1_400, 500) is False  # not yet, and not stamped again
    assert deadline_ms(row) == 1_500
    assert tick(row, 1_500, 500) is True
    assert row.status.phase == P.SANDBOX_PHASE_ERROR
    ready = row.status.conditions[0]
    assert (ready.type, ready.status, ready.reason) == ("Ready", "False", "ReconcilerError")
    assert ready.message == "not ready within 0.5 s: Error seen: pods is forbidden: exceeded quota"
    assert [c.type for c in row.status.conditions] == ["Ready", "PodScheduled"]
    assert not row.status.HasField("provisioning")


def test_without_a_backend_condition_the_reason_is_the_deadline() -> None:
    row = sandbox(P.SANDBOX_PHASE_PROVISIONING)
    tick(row, 0, 10)
    assert tick(row, 10, 10) is True
    assert row.status.conditions[0].reason == DEADLINE_REASON


@pytest.mark.parametrize(
    "phase",
    [P.SANDBOX_PHASE_READY, P.SANDBOX_PHASE_STOPPED, P.SANDBOX_PHASE_ERROR],
)
def test_leaving_provisioning_clears_the_deadline(phase: int) -> None:
    row = sandbox(P.SANDBOX_PHASE_PROVISIONING)
    tick(row, 0, 10)
    row.status.phase = phase
    assert tick(row, 100, 10) is False
    assert deadline_ms(row) is None and not row.status.HasField("provisioning")
    assert row.status.phase == phase


def test_no_limit_stamps_nothing_and_deleting_is_left_alone() -> None:
    row = sandbox(P.SANDBOX_PHASE_PROVISIONING)
    assert tick(row, 0, 0) is False
    assert not row.status.HasField("provisioning")
    deleting = sandbox(P.SANDBOX_PHASE_DELETING)
    deleting.status.provisioning.deadline.FromMilliseconds(5)
    assert tick(deleting, 100, 10) is False
    assert deadline_ms(deleting) == 5


def test_an_unscheduled_pod_says_why() -> None:
    pending = stored_condition("Ready", "False", "DependenciesNotReady")
    pending.message = "Pod exists with phase: Pending"
    unscheduled = stored_condition("PodScheduled", "False", "Unschedulable")
    unscheduled.message = "0/3 nodes are available: 3 Insufficient cpu."
    row = sandbox(P.SANDBOX_PHASE_PROVISIONING, pending, unscheduled)
    tick(row, 0, 1000)
    assert tick(row, 1000, 1000) is True
    assert row.status.conditions[0].message == (
        "not ready within 1 s: Pod exists with phase: Pending; not scheduled (Unschedulable): "
        "0/3 nodes are available: 3 Insufficient cpu."
    )
