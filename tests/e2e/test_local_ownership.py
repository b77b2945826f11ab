"""Three `serve` replicas with the local driver, one Postgres, a state directory *each*.

That is the natural setup for replicas on several hosts, and the one where inferring
ownership from a missing local file went wrong: every replica's sweep found no process for
the others' sandboxes and removed their rows after the grace period, and a DeleteSandbox
through a non-owner answered COMPLETED while the owner's process kept running. The row now
records its owner; the others keep their hands off, and report a sandbox whose owner stopped
beating instead of removing it.
"""

from __future__ import annotations

import asyncio
import os
import re
from pathlib import Path

import grpc
import pytest

from shellgate.api import openshell_pb2, openshell_pb2_grpc
from shellgate.reconcilers.annotations import OWNER_REPLICA_ANNOTATION
from shellgate.reconcilers.ownership import OWNER_LOST_REASON
from tests.support.processes import GatewayProcess, gateways, http_get
from tests.support.wait import eventually

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
P = openshell_pb2

FAST_SWEEP = {"SHELLGATE_SWEEP_GRACE_SECONDS": "1", "SHELLGATE_HEARTBEAT_SECONDS": "0.5"}


def replica(dsn: str, tmp_path: Path, n: int) -> GatewayProcess:
    return GatewayProcess(
        dsn,
        tmp_path / f"state-r{n}",
        replica_id=f"r{n}",
        extra_args=("--sweep-interval", "0.3"),
        env=FAST_SWEEP,
    )


def sandbox_pid(owner: GatewayProcess, sandbox_id: str) -> int:
    pid_text = (owner.state_dir / "sandboxes" / sandbox_id / "pid").read_text().split()[0]
    return int(pid_text)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"


def resyncs_done(process: GatewayProcess) -> float:
    """How many stored rows the replica's resync passes went through (each pass decides
    every row; a row with nothing to do is not reconciled, so reconciles would not count)."""
    _, text = http_get(f"{process.http}/metrics")
    total = 0.0
    for line in text.splitlines():
        if line.startswith('shellgate_resync_rows_total{controller="sandbox"'):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_only_the_owner_acts_and_a_lost_owner_is_reported(
    pg_dsn: str, tmp_path: Path
) -> None:
    r1, r2, r3 = replicas = [replica(pg_dsn, tmp_path, n) for n in (1, 2, 3)]
    async with gateways(replicas):
        channels = [grpc.aio.insecure_channel(r.address) for r in replicas]
        owner, other, third = (openshell_pb2_grpc.OpenShellStub(c) for c in channels)
        try:
            ids = {}
            for name in ("keep-a", "keep-b", "drop"):
                reply = await owner.CreateSandbox(
                    P.CreateSandboxRequest(name=name, spec=P.SandboxSpec())
                )
                assert reply.sandbox.metadata.annotations[OWNER_REPLICA_ANNOTATION] == "r1"
                ids[name] = reply.sandbox.metadata.id

            async def phases(stub: openshell_pb2_grpc.OpenShellStub) -> dict[str, int]:
                listed = await stub.ListSandboxes(P.ListSandboxesRequest())
                return {s.metadata.name: s.status.phase for s in listed.sandboxes}

            await eventually(
                lambda: phases(other), lambda p: set(p.values()) == {P.SANDBOX_PHASE_READY}
            )
            # Many sweeps of every replica, each well past the 1 s grace period.
            before = [resyncs_done(r) for r in (r2, r3)]
            await asyncio.sleep(4)
            assert all(resyncs_done(r) > b + 10 for r, b in zip((r2, r3), before, strict=True))
            assert await phases(third) == dict.fromkeys(ids, P.SANDBOX_PHASE_READY)
            assert all(alive(sandbox_pid(r1, i)) for i in ids.values())

            # A delete through a non-owner is accepted; the owner does it.
            drop_pid = sandbox_pid(r1, ids["drop"])
            deleted = await other.DeleteSandbox(P.DeleteSandboxRequest(name="drop"))
            assert deleted.outcome == P.DELETION_OUTCOME_ACCEPTED
            await eventually(lambda: phases(third), lambda p: "drop" not in p, timeout=15)
            await eventually(lambda: asyncio.sleep(0), lambda _: not alive(drop_pid), timeout=10)

            # The owner dies: the others report its sandboxes, never remove them.
            kept_pids = {sandbox_pid(r1, ids[n]) for n in ("keep-a", "keep-b")}
            r1.kill()
            lost = await eventually(
                lambda: other.GetSandbox(P.GetSandboxRequest(name="keep-a")),
                lambda r: r.sandbox.status.phase == P.SANDBOX_PHASE_UNKNOWN,
                timeout=15,
            )
            ready = lost.sandbox.status.conditions[0]
            assert (ready.type, ready.status, ready.reason) == (
                "Ready",
                "Unknown",
                OWNER_LOST_REASON,
            )
            assert "'r1'" in ready.message
            await asyncio.sleep(3)  # past the grace period, several sweeps more
            assert await phases(third) == {
                "keep-a": P.SANDBOX_PHASE_UNKNOWN,
                "keep-b": P.SANDBOX_PHASE_UNKNOWN,
            }
            assert re.search(r"owner replica r1 stopped reporting", r2.log_text() + r3.log_text())

            # The owner comes back: it restores its sandboxes and its snapshots clear the report.
            r1.start()
            await r1.wait_ready()
            await eventually(
                lambda: phases(third),
                lambda p: p == {"keep-a": P.SANDBOX_PHASE_READY, "keep-b": P.SANDBOX_PHASE_READY},
                timeout=15,
            )
            await eventually(
                lambda: asyncio.sleep(0), lambda _: not any(map(alive, kept_pids)), timeout=10
            )
            back = await third.GetSandbox(P.GetSandboxRequest(name="keep-b"))
            assert OWNER_LOST_REASON not in [c.reason for c in back.sandbox.status.conditions]
        finally:
            for channel in channels:
                await channel.close()
