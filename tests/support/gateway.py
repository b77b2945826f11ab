"""An in-process gateway on a real socket: real store (SQLite file or Postgres), the gRPC
servicer, the reconcile loops (driver events, change feed, a resync at start), and a driver
the test controls (usually FakeDriver)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc

from shellgate.api import openshell_pb2_grpc
from shellgate.controller.app.serve import start_grpc
from shellgate.controller.auth.authenticate import Authenticator
from shellgate.controller.auth.principal import ANONYMOUS_ADMIN, Principal
from shellgate.controller.drivers.base import ComputeDriver
from shellgate.controller.gateway import Gateway
from shellgate.controller.limits import Limits
from shellgate.controller.metrics import Metrics
from shellgate.controller.reconcile.loops import Reconcilers, attach_reconcilers
from shellgate.store import Store
from tests.support.fake_driver import FakeDriver
from tests.support.sealing import new_sealer

SETTLE_AFTER_SECONDS = 2.0
"""How long the draft loop leaves a chunk's effect to its own handler in tests."""


@dataclass
class Running:
    gateway: Gateway
    driver: FakeDriver  # or any ComputeDriver a test passes in
    stub: openshell_pb2_grpc.OpenShellStub
    channel: grpc.aio.Channel
    address: str
    loops: Reconcilers


@contextlib.asynccontextmanager
async def running_gateway(
    store: Store,
    driver: ComputeDriver,
    limits: Limits | None = None,
    *,
    authenticators: Sequence[Authenticator] = (),
    anonymous: Principal | None = ANONYMOUS_ADMIN,
) -> AsyncIterator[Running]:
    gateway = Gateway(
        sealer=new_sealer(),
        store=store,
        driver=driver,
        metrics=Metrics(),
        replica_id="test",
        limits=limits or Limits(),
    )
    store.observer = gateway.metrics  # as serve does: the store reports into the metrics
    loops = attach_reconcilers(gateway, settle_after_seconds=SETTLE_AFTER_SECONDS)
    await driver.start()
    loops.start(0)  # one resync at start; tests that want more call resync themselves
    await asyncio.wait_for(loops.settled(), 10)
    server, _health, port = await start_grpc(
        gateway, "127.0.0.1:0", authenticators=authenticators, anonymous=anonymous
    )
    address = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(address)
    try:
        yield Running(
            gateway,
            driver,
            openshell_pb2_grpc.OpenShellStub(channel),
            channel,
            address,  # type: ignore[arg-type]
            loops,
        )
    finally:
        await channel.close()
        await server.stop(0)
        await loops.stop()
        await driver.close()
