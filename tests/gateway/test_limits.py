"""Per-replica bounds: beyond them a call is RESOURCE_EXHAUSTED at once, and freed slots
serve the next caller. Defaults and flags are in docs/api.md's limits table."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest

from shellgate.api import openshell_pb2
from shellgate.controller.app.options import LIMIT_FLAGS, limit_env
from shellgate.controller.app.serve import add_command
from shellgate.controller.limits import MIB, Limits
from shellgate.store import ConfigurationError, Store
from tests.support.fake_driver import FakeDriver
from tests.support.gateway import Running, running_gateway

P = openshell_pb2


@contextlib.asynccontextmanager
async def limited(store: Store, **bounds: int):  # type: ignore[no-untyped-def]
    async with running_gateway(store, FakeDriver(), Limits(**bounds)) as running:
        yield running


async def open_watch(gw: Running, name: str) -> grpc.aio.UnaryStreamCall:
    call = gw.stub.WatchSandbox(P.WatchSandboxRequest(sandbox=name, follow_status=True))
    await call.read()  # the first event: the stream holds its slot now
    return call


async def test_watch_streams_beyond_the_cap_are_resource_exhausted(store: Store) -> None:
    async with limited(store, max_watch_streams=2) as gw:
        await gw.stub.CreateSandbox(P.CreateSandboxRequest(name="a", spec=P.SandboxSpec()))
        first, second = await open_watch(gw, "a"), await open_watch(gw, "a")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await open_watch(gw, "a")
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        first.cancel()
        for _ in range(100):  # the server frees the slot when it sees the cancellation
            if gw.gateway.watch_slots.held < 2:
                break
            await asyncio.sleep(0.02)
        third = await open_watch(gw, "a")
        second.cancel()
        third.cancel()


async def test_a_request_over_the_receive_limit_is_refused(store: Store) -> None:
    async with limited(store, max_receive_message_bytes=1 * MIB) as gw:
        big = P.CreateSandboxRequest(name="big", spec=P.SandboxSpec())
        big.annotations["a"] = "x" * (1 * MIB + 1)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gw.stub.CreateSandbox(big)
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert list((await gw.stub.ListSandboxes(P.ListSandboxesRequest())).sandboxes) == []


async def test_rpcs_beyond_the_concurrency_cap_are_refused(store: Store) -> None:
    async with limited(store, max_concurrent_rpcs=2) as gw:
        await gw.stub.CreateSandbox(P.CreateSandboxRequest(name="a", spec=P.SandboxSpec()))
        held = [await open_watch(gw, "a"), await open_watch(gw, "a")]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gw.stub.GetSandbox(P.GetSandboxRequest(name="a"))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for call in held:
            call.cancel()


def test_every_limit_has_a_flag_and_a_variable_and_bad_values_are_refused() -> None:
    import argparse

    from shellgate.controller.app.options import options_from_args

    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers())
    names = {name for name, _flag, _text in LIMIT_FLAGS}
    assert names == set(Limits.__dataclass_fields__)
    args = parser.parse_args(["serve", "--max-watch-streams", "7"])
    assert options_from_args(args).limits.max_watch_streams == 7
    assert limit_env("--max-watch-streams") == "SHELLGATE_MAX_WATCH_STREAMS"
    for bad in ("0", "-1", "many", "٣"):
        with pytest.raises(ConfigurationError, match="--max-watch-streams"):
            options_from_args(parser.parse_args(["serve", "--max-watch-streams", bad]))


async def test_exec_calls_beyond_the_cap_are_resource_exhausted(store: Store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from shellgate.controller.drivers.local import LocalDriver

    driver = LocalDriver(state_dir=tmp_path / "state", replica_id="test", stop_grace_s=1)
    async with running_gateway(store, driver, Limits(max_exec_sessions=1)) as gw:
        spec = P.SandboxSpec(command=["sleep", "600"])
        await gw.stub.CreateSandbox(P.CreateSandboxRequest(name="a", spec=spec))
        for _ in range(250):
            reply = await gw.stub.GetSandbox(P.GetSandboxRequest(name="a"))
            if reply.sandbox.status.phase == P.SANDBOX_PHASE_READY:
                break
            await asyncio.sleep(0.02)
        command = ["sh", "-c", "echo go; exec sleep 60"]
        held = gw.stub.ExecSandbox(P.ExecSandboxRequest(sandbox="a", command=command))
        await held.read()  # running: the call holds its slot
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await gw.stub.ExecSandbox(P.ExecSandboxRequest(sandbox="a", command=["true"])).read()
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        held.cancel()
        for _ in range(100):  # the server frees the slot when it sees the cancellation
            if gw.gateway.exec_slots.held == 0:
                break
            await asyncio.sleep(0.02)
        events = [
            e
            async for e in gw.stub.ExecSandbox(P.ExecSandboxRequest(sandbox="a", command=["true"]))
        ]
        assert events[-1].exit.exit_code == 0
