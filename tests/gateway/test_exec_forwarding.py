"""Exec and logs between two in-process replicas with the local driver, on one store.

Each replica has its own state directory and a real LocalDriver; the one that creates a
sandbox owns it. What this adds to the SDK end-to-end tests: the caller's ``authorization``
metadata reaches the owner with a forwarded call, a forwarded call never travels twice
(one that lands on the wrong replica is UNAVAILABLE), GetSandboxLogs filters (sources,
min_level, lines, since_time) including the gateway's own events, and the calls are counted
in the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import pytest
from google.protobuf import timestamp_pb2

from shellgate.api import openshell_pb2, openshell_pb2_grpc
from shellgate.controller.app.serve import record_address, start_grpc
from shellgate.controller.auth.authenticate import CallCredentials
from shellgate.controller.auth.principal import Principal
from shellgate.controller.drivers.local import LocalDriver
from shellgate.controller.gateway import Gateway
from shellgate.controller.metrics import Metrics
from shellgate.controller.reconcile.loops import attach_reconcilers
from shellgate.controller.service.forwarding import FORWARDED_TO
from shellgate.store import Store
from tests.support.sealing import new_sealer
from tests.support.wait import eventually

P = openshell_pb2
T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)


class RecordingAuthenticator:
    """Lets every call through as the anonymous principal, remembering its metadata."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    async def authenticate(self, call: CallCredentials) -> Principal | None:
        self.seen.append(dict(call.metadata))
        return None


@dataclass
class Replica:
    gateway: Gateway
    stub: openshell_pb2_grpc.OpenShellStub
    channel: grpc.aio.Channel


async def frames(*payloads: bytes) -> AsyncIterator[bytes]:
    for payload in payloads:
        yield payload
        await asyncio.sleep(0.2)  # the first is under way before the next arrives


def now(function: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    async def probe() -> T:
        return function()

    return probe


def counts(replica: Replica) -> dict[tuple[str, str], float]:
    """``shellgate_grpc_requests_total`` by (method, code)."""
    return {
        (sample.labels["method"], sample.labels["code"]): sample.value
        for metric in replica.gateway.metrics.registry.collect()
        if metric.name == "shellgate_grpc_requests"
        for sample in metric.samples
        if sample.name.endswith("_total")
    }


def sandbox_id(replica: Replica, name: str) -> str:
    driver = replica.gateway.driver
    return next(i for i, e in driver._sandboxes.items() if e.message.metadata.name == name)  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def replica(
    store: Store, state: Path, replica_id: str, authenticator: RecordingAuthenticator
) -> AsyncIterator[Replica]:
    driver = LocalDriver(state_dir=state, replica_id=replica_id, stop_grace_s=1)
    gateway = Gateway(
        store=store, driver=driver, metrics=Metrics(), replica_id=replica_id, sealer=new_sealer()
    )
    loops = attach_reconcilers(gateway)
    await driver.start()
    loops.start(0)
    server, _health, port = await start_grpc(gateway, "127.0.0.1:0", authenticators=[authenticator])
    await record_address(gateway, f"127.0.0.1:{port}")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Replica(gateway, openshell_pb2_grpc.OpenShellStub(channel), channel)
    finally:
        await channel.close()
        await server.stop(0)
        await loops.stop()
        await driver.close()


async def create(owner: Replica, other: Replica, name: str, command: list[str], phase: int) -> None:
    await owner.stub.CreateSandbox(
        P.CreateSandboxRequest(name=name, spec=P.SandboxSpec(command=command))
    )

    async def current() -> int:
        reply = await other.stub.GetSandbox(P.GetSandboxRequest(name=name))
        return reply.sandbox.status.phase

    await eventually(current, lambda p: p == phase, timeout=20)


async def collect(call: grpc.aio.UnaryStreamCall) -> tuple[bytes, bytes, int | None]:  # type: ignore[type-arg]
    out, err, code = b"", b"", None
    async for event in call:
        kind = event.WhichOneof("payload")
        if kind == "stdout":
            out += event.stdout.data
        elif kind == "stderr":
            err += event.stderr.data
        else:
            code = event.exit.exit_code
    return out, err, code


async def test_forwarding_carries_credentials_and_never_travels_twice(
    store: Store, second_store: Store, tmp_path: Path
) -> None:
    seen_by_owner, seen_by_other = RecordingAuthenticator(), RecordingAuthenticator()
    async with (
        replica(store, tmp_path / "r1", "r1", seen_by_owner) as owner,
        replica(second_store, tmp_path / "r2", "r2", seen_by_other) as other,
    ):
        await create(owner, other, "fwd", ["sleep", "600"], P.SANDBOX_PHASE_READY)
        request = P.ExecSandboxRequest(sandbox="fwd", command=["sh", "-c", "echo hi; exit 5"])
        call = other.stub.ExecSandbox(request, metadata=[("authorization", "Bearer token-123")])
        assert await collect(call) == (b"hi\n", b"", 5)

        forwarded = [m for m in seen_by_owner.seen if FORWARDED_TO in m]
        assert forwarded == [
            {**forwarded[0], "authorization": "Bearer token-123", FORWARDED_TO: "r1"}
        ]

        # A forwarded call that reaches a replica it was not meant for is refused, and one
        # meant for a replica that does not own the sandbox is not relayed again.
        for target, misrouted_to in ((owner, "r9"), (other, "r2")):
            call = target.stub.ExecSandbox(request, metadata=[(FORWARDED_TO, misrouted_to)])
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await collect(call)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert len([m for m in seen_by_owner.seen if FORWARDED_TO in m]) == 2  # r9's only

        # ExecSandboxInteractive whose second message does not decode: INVALID_ARGUMENT from
        # the owner and from a relaying replica alike, and the command is gone.
        start = P.ExecSandboxInput(
            start=P.ExecSandboxRequest(sandbox="fwd", command=["sleep", "60"])
        ).SerializeToString()
        for target in (owner, other):
            method = "/openshell.v1.OpenShell/ExecSandboxInteractive"
            call = target.channel.stream_stream(method)(frames(start, b"\x0a\x02\xff\xfe"))
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _ in call:
                    pass
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value
        entry = owner.gateway.driver._sandboxes[sandbox_id(owner, "fwd")]  # type: ignore[attr-defined]
        await eventually(now(lambda: len(entry.execs)), lambda n: n == 0)

        samples = counts(owner)
        assert samples[("ExecSandbox", "OK")] == 1
        assert samples[("ExecSandbox", "UNAVAILABLE")] == 1
        assert samples[("ExecSandboxInteractive", "INVALID_ARGUMENT")] == 1  # the direct call
        assert samples[("ExecSandboxInteractive", "CANCELLED")] == 1  # the relay cancelled it
        assert counts(other)[("ExecSandboxInteractive", "INVALID_ARGUMENT")] == 1


async def test_logs_filters_and_the_gateways_events(
    store: Store, second_store: Store, tmp_path: Path
) -> None:
    auth = RecordingAuthenticator()
    async with (
        replica(store, tmp_path / "r1", "r1", auth) as owner,
        replica(second_store, tmp_path / "r2", "r2", auth) as other,
    ):
        command = ["sh", "-c", "echo one; echo two; echo oops >&2; exit 3"]
        await create(owner, other, "logs", command, P.SANDBOX_PHASE_ERROR)

        async def logs(**fields: object) -> list[tuple[str, str, str]]:
            reply = await other.stub.GetSandboxLogs(
                P.GetSandboxLogsRequest(sandbox="logs", **fields)
            )
            return [(line.source, line.level, line.message) for line in reply.logs]

        everything = await logs()
        process_lines = [m for s, _l, m in everything if s == "sandbox"]
        assert sorted(process_lines) == ["one", "oops", "two"]  # two pipes: no order between
        assert process_lines.index("one") < process_lines.index("two")
        assert ("gateway", "WARN", "ProcessExited: exited with code 3") in everything
        assert await logs(sources=["sandbox"], min_level="WARN") == [("sandbox", "WARN", "oops")]
        assert [m for _s, _l, m in await logs(sources=["gateway"])] == [
            "ProcessExited: exited with code 3"
        ]
        assert len(await logs(lines=1)) == 1
        future = timestamp_pb2.Timestamp()
        future.FromSeconds(4_000_000_000)
        assert await logs(since_time=future) == []
        for bad in ({"sources": ["kernel"]}, {"min_level": "LOUD"}, {"lines": 5001}):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await logs(**bad)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        # Not READY: exec is refused naming the phase; logs are still there.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await collect(
                other.stub.ExecSandbox(P.ExecSandboxRequest(sandbox="logs", command=["true"]))
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "ERROR" in (refused.value.details() or "")
