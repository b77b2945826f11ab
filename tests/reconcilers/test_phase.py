"""derive_backend_phase and compose_phase: one row per rule the reference gateway applies."""

from __future__ import annotations

import pytest

from shellgate.reconcilers import compose_phase, derive_backend_phase, is_terminal_reason
from shellgate.reconcilers.snapshot import DriverCondition, DriverSnapshot

from .helpers import P, cond, snap

UNSPECIFIED = P.SANDBOX_PHASE_UNSPECIFIED
PROVISIONING = P.SANDBOX_PHASE_PROVISIONING
READY = P.SANDBOX_PHASE_READY
ERROR = P.SANDBOX_PHASE_ERROR
DELETING = P.SANDBOX_PHASE_DELETING
UNKNOWN = P.SANDBOX_PHASE_UNKNOWN
STOPPING = P.SANDBOX_PHASE_STOPPING
STOPPED = P.SANDBOX_PHASE_STOPPED
STARTING = P.SANDBOX_PHASE_STARTING
COMPLETED = P.SANDBOX_PHASE_COMPLETED

TRANSIENT = [
    "ReconcilerError",
    "DependenciesNotReady",
    "Starting",
    "ContainerStarting",
    "HealthCheckStarting",
    "InspectFailed",
    "SupervisorNotConnected",
    "ContainerCreated",
]

DERIVE_ROWS = [
    ("no status", snap(has_status=False), UNKNOWN),
    ("no status wins over deleting", snap(has_status=False, deleting=True), UNKNOWN),
    ("no status ignores conditions", snap(cond("Ready", "True"), has_status=False), UNKNOWN),
    ("deleting", snap(deleting=True), DELETING),
    ("deleting wins over Ready=True", snap(cond("Ready", "True"), deleting=True), DELETING),
    ("deleting wins over Suspended", snap(cond("Suspended", "True"), deleting=True), DELETING),
    ("Suspended=True", snap(cond("Suspended", "True", "PodTerminated")), STOPPED),
    ("Suspended=true, any case", snap(cond("Suspended", "true")), STOPPED),
    (
        "Suspended=True wins over Ready=True",
        snap(cond("Ready", "True"), cond("Suspended", "True")),
        STOPPED,
    ),
    (
        "agent-sandbox fully suspended",
        snap(
            cond("Suspended", "True", "PodTerminated"), cond("Ready", "False", "SandboxSuspended")
        ),
        STOPPED,
    ),
    (
        "Suspended=False falls through to Ready",
        snap(cond("Suspended", "False"), cond("Ready", "True")),
        READY,
    ),
    ("Ready=True", snap(cond("Ready", "True")), READY),
    ("Ready=true lower case", snap(cond("Ready", "true")), READY),
    ("Ready=TRUE upper case", snap(cond("Ready", "TRUE")), READY),
    ("Ready=False terminal reason", snap(cond("Ready", "False", "PodFailed")), ERROR),
    ("Ready=false lower case, terminal", snap(cond("Ready", "false", "Unschedulable")), ERROR),
    ("Ready=False without reason is terminal", snap(cond("Ready", "False")), ERROR),
    (
        "agent-sandbox suspending: SandboxSuspended is terminal on its own",
        snap(cond("Ready", "False", "SandboxSuspended")),
        ERROR,
    ),
    *[
        (f"Ready=False transient {reason}", snap(cond("Ready", "False", reason)), PROVISIONING)
        for reason in TRANSIENT
    ],
    (
        "transient reasons ignore case",
        snap(cond("Ready", "False", "dependenciesnotready")),
        PROVISIONING,
    ),
    ("Ready=Unknown", snap(cond("Ready", "Unknown")), PROVISIONING),
    ("Ready with empty status", snap(cond("Ready", "")), PROVISIONING),
    ("no Ready condition", snap(cond("Initialized", "True")), PROVISIONING),
    ("no conditions at all", snap(), PROVISIONING),
    ("type is matched exactly", snap(cond("ready", "True")), PROVISIONING),
    (
        "the first Ready condition decides",
        snap(cond("Ready", "True"), cond("Ready", "False", "PodFailed")),
        READY,
    ),
    (
        "the first Ready condition decides (failing first)",
        snap(cond("Ready", "False", "PodFailed"), cond("Ready", "True")),
        ERROR,
    ),
]


@pytest.mark.parametrize(
    ("snapshot", "expected"),
    [pytest.param(s, e, id=i) for i, s, e in DERIVE_ROWS],
)
def test_derive_backend_phase(snapshot: DriverSnapshot, expected: int) -> None:
    assert derive_backend_phase(snapshot) == expected


@pytest.mark.parametrize("reason", TRANSIENT)
def test_transient_reasons_are_not_terminal(reason: str) -> None:
    assert not is_terminal_reason(reason)
    assert not is_terminal_reason(reason.upper())


SUSPENDING = (
    cond("Suspended", "False", "PodNotTerminated"),
    cond("Ready", "False", "SandboxSuspended"),
)
SUSPENDED = (cond("Suspended", "True", "PodTerminated"), cond("Ready", "False", "SandboxSuspended"))

COMPOSE_ROWS = [
    # ERROR is sticky.
    ("ERROR stays on backend READY", ERROR, snap(cond("Ready", "True")), ERROR),
    ("ERROR stays on backend PROVISIONING", ERROR, snap(), ERROR),
    ("ERROR stays on backend STOPPED", ERROR, snap(cond("Suspended", "True")), ERROR),
    ("ERROR stays on backend DELETING", ERROR, snap(deleting=True), ERROR),
    ("ERROR stays without status", ERROR, snap(has_status=False), ERROR),
    # From STOPPING.
    ("STOPPING to STOPPED on backend STOPPED", STOPPING, snap(cond("Suspended", "True")), STOPPED),
    (
        "STOPPING to STOPPED on Ready=False ContainerExited",
        STOPPING,
        snap(cond("Ready", "False", "ContainerExited")),
        STOPPED,
    ),
    (
        "STOPPING to STOPPED on Ready=False ContainerStopped",
        STOPPING,
        snap(cond("Ready", "False", "ContainerStopped")),
        STOPPED,
    ),
    (
        "STOPPING to STOPPED, stop reasons ignore case",
        STOPPING,
        snap(cond("Ready", "false", "containerexited")),
        STOPPED,
    ),
    (
        "STOPPING stays on Suspended=False PodTerminating",
        STOPPING,
        snap(cond("Suspended", "False", "PodTerminating"), cond("Ready", "False", "PodFailed")),
        STOPPING,
    ),
    (
        "STOPPING stays on Suspended=False PodNotTerminated (agent-sandbox suspending)",
        STOPPING,
        snap(*SUSPENDING),
        STOPPING,
    ),
    ("agent-sandbox fully suspended: STOPPING to STOPPED", STOPPING, snap(*SUSPENDED), STOPPED),
    ("STOPPING stays on backend READY", STOPPING, snap(cond("Ready", "True")), STOPPING),
    ("STOPPING stays on backend PROVISIONING", STOPPING, snap(), STOPPING),
    ("STOPPING stays on backend DELETING", STOPPING, snap(deleting=True), STOPPING),
    ("STOPPING stays without status", STOPPING, snap(has_status=False), STOPPING),
    (
        "STOPPING stays on Ready=True with an exited-looking reason",
        STOPPING,
        snap(cond("Ready", "True", "ContainerExited")),
        STOPPING,
    ),
    (
        "STOPPING lets ERROR pass",
        STOPPING,
        snap(cond("Ready", "False", "PodFailed")),
        ERROR,
    ),
    (
        "STOPPING lets ERROR pass when Suspended=False has another reason",
        STOPPING,
        snap(cond("Suspended", "False", "Other"), cond("Ready", "False", "PodFailed")),
        ERROR,
    ),
    # STOPPED stays STOPPED.
    ("STOPPED stays on backend READY", STOPPED, snap(cond("Ready", "True")), STOPPED),
    ("STOPPED stays on backend ERROR", STOPPED, snap(cond("Ready", "False", "PodFailed")), STOPPED),
    (
        "agent-sandbox SandboxSuspended while STOPPED is not ERROR",
        STOPPED,
        snap(cond("Ready", "False", "SandboxSuspended")),
        STOPPED,
    ),
    ("STOPPED stays on backend PROVISIONING", STOPPED, snap(), STOPPED),
    ("STOPPED stays on backend DELETING", STOPPED, snap(deleting=True), STOPPED),
    # STARTING waits for READY or ERROR.
    ("STARTING to READY", STARTING, snap(cond("Ready", "True")), READY),
    ("STARTING to ERROR", STARTING, snap(cond("Ready", "False", "PodFailed")), ERROR),
    (
        "STARTING stays on backend PROVISIONING",
        STARTING,
        snap(cond("Ready", "False", "DependenciesNotReady")),
        STARTING,
    ),
    ("STARTING stays on a stale backend STOPPED", STARTING, snap(*SUSPENDED), STARTING),
    ("STARTING stays on backend DELETING", STARTING, snap(deleting=True), STARTING),
    ("STARTING stays without status", STARTING, snap(has_status=False), STARTING),
    # Otherwise the backend phase.
    ("PROVISIONING to READY", PROVISIONING, snap(cond("Ready", "True")), READY),
    ("READY back to PROVISIONING", READY, snap(cond("Ready", "False", "Starting")), PROVISIONING),
    ("READY to ERROR", READY, snap(cond("Ready", "False", "PodFailed")), ERROR),
    ("READY to STOPPED (suspended behind our back)", READY, snap(*SUSPENDED), STOPPED),
    ("READY to DELETING (deleted behind our back)", READY, snap(deleting=True), DELETING),
    ("UNSPECIFIED to READY", UNSPECIFIED, snap(cond("Ready", "True")), READY),
    ("UNKNOWN to PROVISIONING", UNKNOWN, snap(), PROVISIONING),
    ("COMPLETED to READY", COMPLETED, snap(cond("Ready", "True")), READY),
    ("no status keeps READY", READY, snap(has_status=False), READY),
    ("no status keeps PROVISIONING", PROVISIONING, snap(has_status=False), PROVISIONING),
]


@pytest.mark.parametrize(
    ("current", "snapshot", "expected"),
    [pytest.param(c, s, e, id=i) for i, c, s, e in COMPOSE_ROWS],
)
def test_compose_phase(current: int, snapshot: DriverSnapshot, expected: int) -> None:
    backend = derive_backend_phase(snapshot)
    assert compose_phase(current, backend, snapshot) == expected  # type: ignore[arg-type]


# ---- the spec's intent and the generation (Kubernetes) ----------------------------------------


def gcond(type_: str, status: str, reason: str = "", generation: int = 0) -> DriverCondition:
    return DriverCondition(type_, status, reason, observed_generation=generation)


def ksnap(
    *conditions: DriverCondition,
    running: bool | None,
    generation: int | None = None,
    workloads: int | None = None,
) -> DriverSnapshot:
    return DriverSnapshot(
        sandbox_id="sb-1",
        revision=None,
        conditions=conditions,
        generation=generation,
        desired_running=running,
        workload_count=workloads,
    )


INTENT_ROWS = [
    (
        "running: a Suspended=True left by v0.5.0-v0.5.3 is history",
        ksnap(gcond("Suspended", "True", "PodTerminated", 2),
              gcond("Ready", "True", "DependenciesReady", 3), running=True, generation=3),
        READY,
    ),
    (
        "running: no intent (local driver) still reads Suspended",
        ksnap(gcond("Suspended", "True"), gcond("Ready", "True"), running=None),
        STOPPED,
    ),
    (
        "running: conditions of the old spec do not count",
        ksnap(gcond("Ready", "True", "DependenciesReady", 2), running=True, generation=3),
        PROVISIONING,
    ),
    (
        "running: a condition without observedGeneration counts",
        ksnap(gcond("Ready", "True", "DependenciesReady"), running=True, generation=3),
        READY,
    ),
    (
        "running: SandboxSuspended can only be from before the start",
        ksnap(gcond("Ready", "False", "SandboxSuspended"), running=True),
        PROVISIONING,
    ),
    (
        "running: Finished=True/PodFailed (v0.4, v0.5.0-v0.5.3)",
        ksnap(gcond("Finished", "True", "PodFailed", 1),
              gcond("Ready", "False", "DependenciesNotReady", 1), running=True, generation=1),
        ERROR,
    ),
    (
        "running: Finished=True/PodSucceeded",
        ksnap(gcond("Finished", "True", "PodSucceeded"), running=True),
        COMPLETED,
    ),
    (
        "running: Ready=False/PodSucceeded (v0.5.4+)",
        ksnap(gcond("Ready", "False", "PodSucceeded"), running=True),
        COMPLETED,
    ),
    (
        "running v1alpha1: Ready=True without a workload is not running",
        ksnap(gcond("Ready", "True", "DependenciesReady"), running=True, workloads=0),
        PROVISIONING,
    ),
    (
        "stopping: Suspended=True at the current generation",
        ksnap(gcond("Suspended", "True", "PodTerminated", 4), running=False, generation=4),
        STOPPED,
    ),
    (
        "stopping: Suspended=True of an earlier stop",
        ksnap(gcond("Suspended", "True", "PodTerminated", 2),
              gcond("Ready", "True", "DependenciesReady", 3), running=False, generation=4),
        STOPPING,
    ),
    (
        "stopping: Suspended=False/PodTerminating (v0.5.4+)",
        ksnap(gcond("Suspended", "False", "PodTerminating", 4), running=False, generation=4),
        STOPPING,
    ),
    (
        "stopping: the controller refuses a pod it does not own",
        ksnap(gcond("Suspended", "False", "PodNotOwned", 4), running=False, generation=4),
        ERROR,
    ),
    (
        "stopping v1alpha1: replicas 0 at the current generation (v0.4)",
        ksnap(gcond("Ready", "True", "DependenciesReady", 2), running=False, generation=2,
              workloads=0),
        STOPPED,
    ),
    (
        "stopping v1alpha1: a pod still counted",
        ksnap(gcond("Ready", "True", "DependenciesReady", 2), running=False, generation=2,
              workloads=1),
        STOPPING,
    ),
    (
        "stopping v1alpha1: replicas 0 but only conditions of the old spec",
        ksnap(gcond("Ready", "True", "DependenciesReady", 1), running=False, generation=2,
              workloads=0),
        STOPPING,
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("snapshot", "expected"), [r[1:] for r in INTENT_ROWS], ids=[r[0] for r in INTENT_ROWS]
)
def test_derive_reads_the_intent_and_the_generation(
    snapshot: DriverSnapshot, expected: int
) -> None:
    assert derive_backend_phase(snapshot) == expected


def test_a_start_completes_from_starting() -> None:
    done = ksnap(gcond("Finished", "True", "PodSucceeded"), running=True)
    assert compose_phase(STARTING, derive_backend_phase(done), done) == COMPLETED
