"""WatchSandbox on replica B sees a change that replica A applied.

The stream has no periodic re-read, so the only way the change can reach B is the store's
change feed (Postgres LISTEN/NOTIFY; SQLite's cross-process poll). Latency is the
feed's (milliseconds on Postgres, at most the 200 ms poll on SQLite); it is not asserted here.
"""

from __future__ import annotations

import asyncio

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.base import SnapshotEvent
from shellgate.store import Store
from tests.support.fake_driver import FakeDriver, ready
from tests.support.gateway import running_gateway

P = openshell_pb2


async def test_watch_on_b_sees_a_change_applied_on_a(store: Store, second_store: Store) -> None:
    async with (
        running_gateway(store, FakeDriver(auto_ready=False)) as a,
        running_gateway(second_store, FakeDriver(auto_ready=False)) as b,
    ):
        created = (
            await a.stub.CreateSandbox(P.CreateSandboxRequest(name="x", spec=P.SandboxSpec()))
        ).sandbox
        stream = b.stub.WatchSandbox(P.WatchSandboxRequest(sandbox="x", follow_status=True))
        first = await asyncio.wait_for(stream.read(), 5)
        assert first.sandbox.status.phase == P.SANDBOX_PHASE_PROVISIONING
        a.driver.emit(SnapshotEvent(ready(created.metadata.id, 1)))  # only A's driver sees it
        update = await asyncio.wait_for(stream.read(), 10)
        stream.cancel()
    assert update.sandbox.status.phase == P.SANDBOX_PHASE_READY
