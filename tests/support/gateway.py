"""An in-process gateway on a real socket: real store (SQLite file or Postgres), the gRPC
servicer, the driver watch loop, and a driver the test controls (usually FakeDriver)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from shellgate.api import openshell_pb2_grpc
from shellgate.controller.app.serve import start_grpc
from shellgate.controller.drivers.base import ComputeDriver
from shellgate.controller.gateway import Gateway
from shellgate.controller.limits import Limits
from shellgate.controller.metrics import Metrics
from shellgate.controller.reconcile.driver_events import run_watch_loop
from shellgate.store import Store
from tests.support.fake_driver import FakeDriver


@dataclass
class Running:
    gateway: Gateway
    driver: FakeDriver  # or any ComputeDriver a test passes in
    stub: openshell_pb2_grpc.OpenShellStub
    channel: grpc.aio.Channel
    address: str


@contextlib.asynccontextmanager
async def running_gateway(
    store: Store, driver: ComputeDriver, limits: Limits | None = None
) -> AsyncIterator[Running]:
    gateway = Gateway(
        store=store, driver=driver, metrics=Metrics(), replica_id="test", limits=limits or Limits()
    )
    store.observer = gateway.metrics  # as serve does: the store reports into the metrics
    await driver.start()
    watch = asyncio.create_task(run_watch_loop(gateway))
    server, _health, port = await start_grpc(gateway, "127.0.0.1:0")
    address = f"127.0.0.1:{port}"
    channel = grpc.aio.insecure_channel(address)
    try:
        yield Running(
            gateway,
            driver,
            openshell_pb2_grpc.OpenShellStub(channel),
            channel,
            address,  # type: ignore[arg-type]
        )
    finally:
        await channel.close()
        await server.stop(0)
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await driver.close()
