"""Two `serve` processes with the local driver on one Postgres and one state directory.

A sandbox runs under the replica that created it. Stop, start and delete sent to the other
replica only move the row; the owner hears of it through the change feed and acts.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from shellgate.api import openshell_pb2, openshell_pb2_grpc
from tests.support.processes import GatewayProcess, gateways
from tests.support.wait import eventually

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
P = openshell_pb2


async def test_the_owner_follows_requests_sent_to_another_replica(
    pg_dsn: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    replicas = [GatewayProcess(pg_dsn, state, replica_id=f"r{n}") for n in (1, 2)]
    async with gateways(replicas):
        channels = [grpc.aio.insecure_channel(r.address) for r in replicas]
        owner, other = (openshell_pb2_grpc.OpenShellStub(c) for c in channels)

        async def phase() -> int:
            reply = await other.GetSandbox(P.GetSandboxRequest(name="routed"))
            return reply.sandbox.status.phase

        try:
            created = await owner.CreateSandbox(
                P.CreateSandboxRequest(name="routed", spec=P.SandboxSpec())
            )
            sandbox_id = created.sandbox.metadata.id
            workdir = state / "sandboxes" / sandbox_id
            assert (workdir / "owner").read_text() == "r1"
            await eventually(phase, lambda p: p == P.SANDBOX_PHASE_READY)

            stopping = await other.StopSandbox(P.StopSandboxRequest(name="routed"))
            assert stopping.sandbox.status.phase == P.SANDBOX_PHASE_STOPPING
            await eventually(phase, lambda p: p == P.SANDBOX_PHASE_STOPPED)

            starting = await other.StartSandbox(P.StartSandboxRequest(name="routed"))
            assert starting.sandbox.status.phase == P.SANDBOX_PHASE_STARTING
            await eventually(phase, lambda p: p == P.SANDBOX_PHASE_READY)

            deleted = await other.DeleteSandbox(P.DeleteSandboxRequest(name="routed"))
            assert deleted.outcome == P.DELETION_OUTCOME_ACCEPTED

            async def gone() -> bool:
                try:
                    await other.GetSandbox(P.GetSandboxRequest(name="routed"))
                except grpc.aio.AioRpcError as error:
                    return error.code() == grpc.StatusCode.NOT_FOUND
                return False

            await eventually(gone, lambda is_gone: is_gone, timeout=20)
            assert not workdir.exists()
        finally:
            for channel in channels:
                await channel.close()
