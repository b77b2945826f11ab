"""Which replica may act on a sandbox, and how a sandbox whose owner is gone is reported.

With a driver whose sandboxes only one replica can touch (the local driver runs them as that
replica's child processes), the replica that created a sandbox records itself in the row
(``openshell.ai/owner-replica``). Every other replica keeps its hands off: it neither calls
its own driver for the sandbox nor repairs or removes the row, because from where it stands an
absent process means nothing (the process runs on another host, or in another state
directory). Inferring ownership from a missing local file made every replica "own" every other
replica's sandboxes and delete their rows after the sweep's grace period.

When the owner stops proving it is alive (its heartbeat row goes stale), another replica does
not remove or "repair" the sandbox either; it reports it: phase UNKNOWN (transitions keep their
phase, so the owner still finds the intent when it comes back) with the condition
``Ready=Unknown/OwnerReplicaLost`` naming the owner. The owner's next snapshot replaces the
conditions and the phase when it returns; a user may delete the row meanwhile.
"""

from __future__ import annotations

from shellgate.api import openshell_pb2
from shellgate.reconcilers.annotations import OWNER_REPLICA_ANNOTATION
from shellgate.reconcilers.phase import DELETING, STARTING, STOPPING, UNKNOWN

Sandbox = openshell_pb2.Sandbox

OWNER_LOST_REASON = "OwnerReplicaLost"
KEEPS_PHASE_WHEN_OWNER_LOST = frozenset({DELETING, STOPPING, STARTING})
"""Transitions keep their phase: it is the intent the owner acts on when it returns."""


def owner_of(sandbox: Sandbox) -> str | None:
    """The replica recorded as the sandbox's owner, or None (rows made before it was recorded,
    or by a driver any replica can act on)."""
    return sandbox.metadata.annotations.get(OWNER_REPLICA_ANNOTATION) or None


def record_owner(sandbox: Sandbox, replica_id: str) -> Sandbox:
    """Write ``replica_id`` into the candidate of a create (before it is inserted)."""
    sandbox.metadata.annotations[OWNER_REPLICA_ANNOTATION] = replica_id
    return sandbox


def is_marked_owner_lost(sandbox: Sandbox) -> bool:
    return any(
        c.type == "Ready" and c.reason == OWNER_LOST_REASON for c in sandbox.status.conditions
    )


def mark_owner_lost(sandbox: Sandbox, now_ms: int) -> Sandbox:
    """Report that the owner replica is gone: ``Ready=Unknown/OwnerReplicaLost`` first, the
    phase UNKNOWN unless it is a transition. Edits ``sandbox`` in place; a row already marked
    is returned unchanged (nothing to write)."""
    if is_marked_owner_lost(sandbox):
        return sandbox
    owner = owner_of(sandbox) or "(unrecorded)"
    ready = openshell_pb2.SandboxCondition(
        type="Ready",
        status="Unknown",
        reason=OWNER_LOST_REASON,
        message=f"replica {owner!r}, which runs this sandbox, has stopped reporting",
    )
    ready.transition_time.FromMilliseconds(now_ms)
    status = sandbox.status
    kept = [c for c in status.conditions if c.type != "Ready"]
    del status.conditions[:]
    status.conditions.extend([ready, *kept])
    if status.phase not in KEEPS_PHASE_WHEN_OWNER_LOST:
        status.phase = UNKNOWN
    return sandbox
