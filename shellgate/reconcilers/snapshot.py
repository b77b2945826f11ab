"""What a compute driver observed about one sandbox, as plain values.

Drivers build ``DriverSnapshot``s from their own world (a Kubernetes ``Sandbox`` object, a
local child process); reconcilers turn them into sandbox status. ``revision`` orders snapshots
of one sandbox: Kubernetes ``metadata.resourceVersion`` read as an integer, a counter in the
local driver. ``None`` means the driver cannot order this snapshot, and it is applied in
arrival order, unguarded.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class DriverCondition:
    """One condition as the driver reports it (Kubernetes ``metav1.Condition`` shape)."""

    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str = ""
    message: str = ""
    last_transition_time_ms: int = 0
    observed_generation: int = 0
    """The object generation the condition was written for; 0 when the driver does not say."""


@dataclass(frozen=True, slots=True)
class InstanceFacts:
    """Where the sandbox runs right now; empty when nothing runs."""

    pod_name: str = ""
    pod_ips: tuple[str, ...] = ()
    node_name: str = ""


@dataclass(frozen=True, slots=True)
class DriverSnapshot:
    sandbox_id: str
    revision: int | None
    conditions: tuple[DriverCondition, ...] = ()
    deleting: bool = False
    has_status: bool = True
    instance: InstanceFacts = field(default_factory=InstanceFacts)
    exit_code: int | None = None
    generation: int | None = None
    """The generation of the object's spec (Kubernetes ``metadata.generation``); a condition
    written for an older generation describes a spec that no longer holds."""
    desired_running: bool | None = None
    """What the object's spec asks for (running or stopped); None for drivers whose objects
    carry no such intent, where the conditions alone decide."""
    workload_count: int | None = None
    """How many workloads the backend reports running (agent-sandbox v1alpha1
    ``status.replicas``); None when the backend does not report a count."""
