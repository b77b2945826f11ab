"""The object every benchmark writes, and the one mutation every writer applies.

A sandbox of realistic size (a template, a few labels and environment variables, about
200 bytes encoded), so decoding and encoding cost what they cost in production. The mutation
increments ``status.current_policy_version``: the counter the lost-update check sums.
"""

from __future__ import annotations

import uuid

from shellgate.api import openshell_pb2

Sandbox = openshell_pb2.Sandbox


def bench_sandbox() -> openshell_pb2.Sandbox:
    message = openshell_pb2.Sandbox()
    message.metadata.id = str(uuid.uuid4())
    message.metadata.name = f"bench-{uuid.uuid4().hex[:12]}"
    message.metadata.workspace = "default"
    message.metadata.labels.update({"app": "bench", "team": "control-plane"})
    message.spec.log_level = "info"
    message.spec.template.image = "ghcr.io/example/agent-runtime:1.4.2"
    message.spec.environment.update({"LANG": "C.UTF-8", "AGENT_MODE": "benchmark"})
    message.spec.command.extend(["/usr/bin/agent", "--serve"])
    message.status.phase = openshell_pb2.SANDBOX_PHASE_READY
    return message


def increment(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
    """The mutation: one more on the counter (never a no-op, so every call writes)."""
    message.status.current_policy_version += 1
    return message
