"""The provisioning deadline: a sandbox that cannot come up becomes ERROR, saying why.

A compute backend reports many failures as "not yet": agent-sandbox answers a pod refused by
Pod Security admission, a quota or a LimitRange with Ready=False/ReconcilerError, and a pod
that can never be scheduled or pulled with Ready=False/DependenciesNotReady, both of which
are also what a healthy sandbox reports while it starts. Only time tells them apart. So a
sandbox that enters PROVISIONING or STARTING gets a deadline (``status.provisioning.deadline``,
stamped by the first reconcile that sees it there); still there at the deadline, it becomes
ERROR with the backend's own reason and message, and ERROR stays until the user acts.
Leaving those phases clears the deadline, so the next provisioning gets a fresh one.
"""

from __future__ import annotations

from collections.abc import Iterable

from shellgate.api import openshell_pb2
from shellgate.reconcilers.phase import DELETING, ERROR, PROVISIONING, READY_CONDITION, STARTING

Sandbox = openshell_pb2.Sandbox

PROVISIONING_PHASES = frozenset({PROVISIONING, STARTING})
DEADLINE_REASON = "ProvisioningDeadlineExceeded"
SCHEDULED_CONDITION = "PodScheduled"


def deadline_ms(sandbox: Sandbox) -> int | None:
    """The stamped deadline in ms since the epoch, or None."""
    provisioning = sandbox.status.provisioning
    if not sandbox.status.HasField("provisioning") or not provisioning.HasField("deadline"):
        return None
    return int(provisioning.deadline.ToMilliseconds())


def _clear_deadline(sandbox: Sandbox) -> None:
    sandbox.status.provisioning.ClearField("deadline")
    if sandbox.status.provisioning.ByteSize() == 0:
        sandbox.status.ClearField("provisioning")


def tick(sandbox: Sandbox, now_ms: int, limit_ms: int) -> bool:
    """Advance the deadline of ``sandbox`` (edited in place); True when it just expired.

    - outside PROVISIONING/STARTING: a leftover deadline is cleared;
    - inside, with a limit (``limit_ms`` > 0): stamped once at ``now + limit``, and at or past
      it the sandbox is marked ERROR (``mark_deadline_exceeded``).
    A DELETING sandbox is left alone: its row goes with its object.
    """
    phase = sandbox.status.phase
    stamped = deadline_ms(sandbox)
    if phase == DELETING:
        return False
    if phase not in PROVISIONING_PHASES:
        if stamped is not None:
            _clear_deadline(sandbox)
        return False
    if limit_ms <= 0:
        return False
    if stamped is None:
        sandbox.status.provisioning.deadline.FromMilliseconds(now_ms + limit_ms)
        return False
    if now_ms < stamped:
        return False
    mark_deadline_exceeded(sandbox, now_ms, limit_ms)
    return True


def mark_deadline_exceeded(sandbox: Sandbox, now_ms: int, limit_ms: int) -> None:
    """ERROR, with a Ready=False condition that keeps the backend's reason and message.

    The backend's Ready=False says what is wrong ("pods ... is forbidden: violates
    PodSecurity ..."); the user needs that, not a generic timeout. Without one (the backend
    said nothing at all, say its controller is not running), the reason says it was the
    deadline.
    """
    status = sandbox.status
    ready = next((c for c in status.conditions if c.type == READY_CONDITION), None)
    seconds = f"{limit_ms / 1000:g}"
    if ready is not None and ready.status == "False" and ready.reason:
        reason = ready.reason
        message = f"not ready within {seconds} s: {ready.message}".rstrip(": ")
        message += _scheduling(status.conditions)
    else:
        reason = DEADLINE_REASON
        message = f"the compute backend reported no progress within {seconds} s"
    condition = openshell_pb2.SandboxCondition(
        type=READY_CONDITION, status="False", reason=reason, message=message
    )
    condition.transition_time.FromMilliseconds(now_ms)
    kept = [c for c in status.conditions if c.type != READY_CONDITION]
    del status.conditions[:]
    status.conditions.extend([condition, *kept])
    status.phase = ERROR
    _clear_deadline(sandbox)


def _scheduling(conditions: Iterable[openshell_pb2.SandboxCondition]) -> str:
    """Why the pod is not scheduled, when the backend says: "Pod exists with phase: Pending"
    alone does not tell a full quota or a missing node from a slow image pull."""
    scheduled = next((c for c in conditions if c.type == SCHEDULED_CONDITION), None)
    if scheduled is None or scheduled.status != "False" or not scheduled.message:
        return ""
    return f"; not scheduled ({scheduled.reason}): {scheduled.message}"
