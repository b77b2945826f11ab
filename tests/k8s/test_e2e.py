"""End to end: three ``shellgate serve --driver kubernetes`` processes, kmock, Postgres.

Every replica watches the same kmock API server and writes the same Postgres database. The
test plays the agent-sandbox controller by patching status onto the objects (with a
resourceVersion it chooses, since kmock assigns none) and checks what the replicas agree on.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from shellgate.api import openshell_pb2 as P
from shellgate.api import openshell_pb2_grpc
from tests.k8s.conftest import until, until_async
from tests.support.k8s_emulator import NAMESPACE, k8s_name, running_status, status_patch
from tests.support.k8s_processes import ClusterClient, KmockProcess, metric, scrape
from tests.support.processes import GatewayProcess

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(90)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Replica:
    process: GatewayProcess
    channel: grpc.aio.Channel
    stub: openshell_pb2_grpc.OpenShellStub

    async def metrics(self) -> Samples:
        return await scrape(self.process.http)

    async def phase(self, name: str) -> int:
        response = await self.stub.GetSandbox(P.GetSandboxRequest(name=name))
        return response.sandbox.status.phase

    async def sandbox(self, name: str) -> P.Sandbox:
        return (await self.stub.GetSandbox(P.GetSandboxRequest(name=name))).sandbox


@dataclass
class Cluster:
    kmock: KmockProcess
    api: ClusterClient
    replicas: Sequence[Replica]


@contextlib.asynccontextmanager
async def cluster(workdir: Path, database_url: str) -> AsyncIterator[Cluster]:
    kmock = KmockProcess(workdir / "kmock")
    kmock.start()
    processes: list[GatewayProcess] = []
    channels: list[grpc.aio.Channel] = []
    api: ClusterClient | None = None
    try:
        await kmock.wait_ready()
        processes = [
            GatewayProcess(
                database_url=database_url,
                state_dir=workdir / f"r{i}",
                replica_id=f"r{i}",
                driver="kubernetes",
                extra_args=(
                    "--namespace", NAMESPACE,
                    "--sandbox-image", "registry.example/sandbox:1",
                    "--sweep-interval", "3600",
                ),
                env={"KUBECONFIG": str(kmock.kubeconfig)},
            )
            for i in (1, 2, 3)
        ]  # fmt: skip
        for process in processes:
            process.start()
        await asyncio.gather(*(p.wait_ready(timeout=30) for p in processes))
        channels = [grpc.aio.insecure_channel(p.address) for p in processes]
        replicas = [
            Replica(p, c, openshell_pb2_grpc.OpenShellStub(c))
            for p, c in zip(processes, channels, strict=True)
        ]
        api = ClusterClient(kmock.url)
        yield Cluster(kmock, api, replicas)
    finally:
        if api is not None:
            await api.close()
        for channel in channels:
            await channel.close()
        await asyncio.gather(*(_stop(p) for p in processes))
        kmock.stop()


async def _stop(process: GatewayProcess) -> None:
    with contextlib.suppress(AssertionError):
        await process.stop()
    process.kill()


def create_request(name: str) -> P.CreateSandboxRequest:
    return P.CreateSandboxRequest(name=name, spec=P.SandboxSpec())


def driver_events(samples: Samples) -> float:
    return metric(samples, "shellgate_driver_events_total", driver="kubernetes")


def cas_written(samples: Samples) -> float:
    return metric(
        samples, "shellgate_store_cas_attempts_total", object_type="sandbox", result="written"
    )


async def test_an_event_reaches_every_replica_and_is_written_once(
    tmp_path: Path, pg_dsn: str
) -> None:
    async with cluster(tmp_path, pg_dsn) as c:
        one, _, three = c.replicas
        created = (await one.stub.CreateSandbox(create_request("shared"))).sandbox
        body = await c.api.get(k8s_name("shared"))
        assert body is not None
        assert body["metadata"]["labels"]["openshell.ai/sandbox-id"] == created.metadata.id

        # Every replica has handled the ADDED event before the status change is measured.
        async def all_saw_added() -> bool:
            return all([driver_events(await r.metrics()) >= 1 for r in c.replicas])

        await until_async(all_saw_added, timeout=15)
        events_before = [driver_events(await r.metrics()) for r in c.replicas]
        written_before = sum([cas_written(await r.metrics()) for r in c.replicas])
        version_before = (await one.sandbox("shared")).metadata.resource_version

        stream = three.stub.WatchSandbox(
            P.WatchSandboxRequest(sandbox="shared", follow_status=True)
        )
        seen: list[P.SandboxStreamEvent] = []
        reader = asyncio.create_task(_collect(stream, seen))
        await until(lambda: len(seen) >= 1)

        await c.api.patch(k8s_name("shared"), status_patch(running_status(), "2"))

        async def ready_everywhere() -> bool:
            phases = [await r.phase("shared") for r in c.replicas]
            return phases == [P.SANDBOX_PHASE_READY] * 3

        async def every_replica_saw_it() -> bool:
            counts = [driver_events(await r.metrics()) for r in c.replicas]
            return all(a >= b + 1 for a, b in zip(counts, events_before, strict=True))

        await until_async(ready_everywhere, timeout=15)
        await until_async(every_replica_saw_it, timeout=15)
        await until(lambda: any(_is_ready(e) for e in seen), timeout=15)
        stream.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await reader

        after = await one.sandbox("shared")
        assert after.metadata.resource_version == version_before + 1
        written_after = sum([cas_written(await r.metrics()) for r in c.replicas])
        assert written_after - written_before == 1
        # kopf runs inside the gateway but must not take SIGTERM from it.
        assert await three.process.stop() == 0


async def test_a_burst_survives_a_killed_replica(tmp_path: Path, pg_dsn: str) -> None:
    names = [f"burst-{i:02d}" for i in range(20)]
    rounds = 10
    async with cluster(tmp_path, pg_dsn) as c:
        one, two, three = c.replicas
        await asyncio.gather(
            *(c.replicas[i % 3].stub.CreateSandbox(create_request(n)) for i, n in enumerate(names))
        )
        await until_async(lambda: _names_present(c, names), timeout=15)

        revision = 1000
        expected: dict[str, tuple[int, str]] = {}
        for round_ in range(rounds):
            if round_ == rounds // 2:
                assert two.process.process is not None
                two.process.process.send_signal(signal.SIGKILL)
            patches = []
            for j, name in enumerate(names):
                revision += 1
                ready = (round_ + j) % 2 == 0
                status = running_status(
                    ready=ready, reason="DependenciesReady" if ready else "DependenciesNotReady"
                )
                phase = P.SANDBOX_PHASE_READY if ready else P.SANDBOX_PHASE_PROVISIONING
                expected[name] = (phase, str(revision))
                patches.append(c.api.patch(k8s_name(name), status_patch(status, str(revision))))
            await asyncio.gather(*patches)

        async def settled() -> bool:
            for replica in (one, three):
                listed = await replica.stub.ListSandboxes(P.ListSandboxesRequest(page_size=100))
                now = {
                    s.metadata.name: (
                        s.status.phase,
                        s.metadata.annotations.get("openshell.ai/driver-revision"),
                    )
                    for s in listed.sandboxes
                }
                if now != expected:
                    return False
            return True

        await until_async(settled, timeout=30)
        assert two.process.process is not None and two.process.process.poll() == -signal.SIGKILL


async def _names_present(c: Cluster, names: list[str]) -> bool:
    return {k8s_name(n) for n in names} <= await c.api.names()


async def _collect(stream: object, into: list[P.SandboxStreamEvent]) -> None:
    async for item in stream:  # type: ignore[attr-defined]
        into.append(item)


def _is_ready(event: P.SandboxStreamEvent) -> bool:
    return event.HasField("sandbox") and event.sandbox.status.phase == P.SANDBOX_PHASE_READY
