"""30 concurrent server-driven attaches through 3 `serve` processes on one Postgres."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from shellgate.api import datamodel_pb2, openshell_pb2, openshell_pb2_grpc
from tests.support.processes import GatewayProcess, gateways

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
P = openshell_pb2
ATTACHES = 30


async def test_thirty_concurrent_attaches_across_three_replicas(
    pg_dsn: str, tmp_path: Path
) -> None:
    replicas = [GatewayProcess(pg_dsn, tmp_path / f"r{n}", replica_id=f"r{n}") for n in range(1, 4)]
    async with gateways(replicas):
        channels = [grpc.aio.insecure_channel(r.address) for r in replicas]
        stubs = [openshell_pb2_grpc.OpenShellStub(c) for c in channels]
        try:
            await stubs[0].CreateSandbox(
                P.CreateSandboxRequest(name="shared", spec=P.SandboxSpec())
            )
            for n in range(ATTACHES):
                provider = datamodel_pb2.Provider(type="github", credentials={"T": "x"})
                provider.metadata.name = f"p{n}"
                await stubs[0].CreateProvider(P.CreateProviderRequest(provider=provider))

            async def attach(n: int) -> bool:
                request = P.AttachSandboxProviderRequest(sandbox="shared", provider=f"p{n}")
                try:
                    response = await stubs[n % 3].AttachSandboxProvider(request)
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.ABORTED, error
                    return False
                assert response.attached
                return True

            first_call = await asyncio.gather(*(attach(n) for n in range(ATTACHES)))
            acknowledged = {f"p{n}" for n, ok in enumerate(first_call) if ok}
            final = await stubs[2].GetSandbox(P.GetSandboxRequest(name="shared"))
        finally:
            for channel in channels:
                await channel.close()
    ok = sum(first_call)
    assert ok >= 27, f"only {ok} of {ATTACHES} attaches succeeded on their first call"
    assert acknowledged <= set(final.sandbox.spec.providers), "an acknowledged attach was lost"
    assert len(final.sandbox.spec.providers) == ok
