"""Races reconcile must lose gracefully, forced with hooks (never left to scheduling luck).

1. Snapshot versus intent: a DeleteSandbox's DELETING write lands between reconcile's read of
   the row and its write of the snapshot. The write is bound to the version read, so it is
   refused, reconcile decides again from the DELETING row, and the acknowledged intent stands.
   The companion test removes that guard (the candidate is written at whatever version the
   row has) and shows that the first test's check then fails: the intent is lost.
2. Several replicas on one database receiving the same driver events: each event is written
   once (the row's version moves by one per event, not per replica).

Both run on SQLite and Postgres (the ``store_url`` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shellgate.api import openshell_pb2 as P
from shellgate.controller.drivers.base import SnapshotEvent
from shellgate.controller.gateway import Gateway
from shellgate.controller.metrics import Metrics
from shellgate.controller.reconcile import sandboxes
from shellgate.controller.reconcile.sandboxes import SandboxReconciler
from shellgate.reconcilers import sandbox as sandbox_rules
from shellgate.store import ObjectRecord, Store, connect
from tests.support.fake_driver import FakeDriver, ready, suspended
from tests.support.objects import sandbox as sandbox_message
from tests.support.sealing import new_sealer

pytestmark = pytest.mark.timeout(60)


class IntentBetweenReadAndWrite:
    """The real store, except that the next read of ``sandbox_id`` is followed, before
    reconcile gets the row, by a DeleteSandbox's first step written through the real store.
    Everything else (the CAS, the change feed) is the store itself."""

    def __init__(self, store: Store, sandbox_id: str) -> None:
        self._store = store
        self._sandbox_id = sandbox_id
        self.armed = True
        self.intent_version = 0

    async def get(self, object_type: str, id: str) -> ObjectRecord | None:
        record = await self._store.get(object_type, id)
        if self.armed and object_type == "sandbox" and id == self._sandbox_id:
            self.armed = False
            outcome = await self._store.update_message_cas(
                P.Sandbox, id, sandbox_rules.begin_delete()
            )
            assert outcome.written
            self.intent_version = outcome.message.metadata.resource_version
        return record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


async def snapshot_against_intent(store: Store) -> tuple[P.Sandbox, int]:
    """Run the forced interleaving; returns the row afterwards and the intent's version."""
    created = await store.create_message(sandbox_message("raced"))
    sandbox_id = created.metadata.id
    hooked = IntentBetweenReadAndWrite(store, sandbox_id)
    driver = FakeDriver(auto_ready=False)
    gw = Gateway(
        sealer=new_sealer(), store=hooked, driver=driver, metrics=Metrics(), replica_id="r"
    )  # type: ignore[arg-type]
    reconciler = SandboxReconciler(gw)
    workers = asyncio.create_task(reconciler.run(workers=1))
    try:
        reconciler.observe(SnapshotEvent(ready(sandbox_id, 5)))
        await asyncio.wait_for(reconciler.queue.wait_idle(), 20)
    finally:
        reconciler.queue.shutdown()
        workers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await workers
    assert not hooked.armed, "the hook never fired"
    final = await store.get_message(P.Sandbox, sandbox_id)
    assert final is not None
    return final, hooked.intent_version


def assert_intent_kept(final: P.Sandbox, intent_version: int) -> None:
    """Nothing acknowledged is lost: the row is where the DeleteSandbox left it."""
    assert final.status.phase == P.SANDBOX_PHASE_DELETING
    assert final.metadata.resource_version == intent_version


async def test_a_snapshot_never_undoes_an_intent_written_after_the_read(store: Store) -> None:
    final, intent_version = await snapshot_against_intent(store)
    assert_intent_kept(final, intent_version)


async def test_without_the_version_guard_the_intent_is_lost(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The companion: the same interleaving with the write unbound from the version read."""

    async def unguarded(gw: Gateway, sandbox_id: str, candidate: P.Sandbox, version: int) -> bool:
        outcome = await gw.store.update_message_cas(P.Sandbox, sandbox_id, lambda _: candidate)
        return outcome.written

    monkeypatch.setattr(sandboxes, "write_at", unguarded)
    final, intent_version = await snapshot_against_intent(store)
    with pytest.raises(AssertionError):
        assert_intent_kept(final, intent_version)
    assert final.status.phase != P.SANDBOX_PHASE_DELETING  # the DeleteSandbox was undone


# ---- several replicas, the same events --------------------------------------------------------

REPLICAS = 3
EVENTS = 20


@contextlib.asynccontextmanager
async def replicas(store_url: str) -> AsyncIterator[list[tuple[Gateway, FakeDriver]]]:
    """Three gateways, each with its own connection, driver and reconcile workers."""
    opened: list[tuple[Gateway, FakeDriver, SandboxReconciler, asyncio.Task[None]]] = []
    try:
        for n in range(REPLICAS):
            store = await connect(store_url)
            driver = FakeDriver(auto_ready=False)
            gw = Gateway(
                sealer=new_sealer(),
                store=store,
                driver=driver,
                metrics=Metrics(),
                replica_id=f"r{n}",
            )
            reconciler = SandboxReconciler(gw)
            driver.attach(reconciler.observe)
            opened.append((gw, driver, reconciler, asyncio.create_task(reconciler.run())))
        yield [(gw, driver) for gw, driver, _, _ in opened]
        for _, _, reconciler, _ in opened:
            await asyncio.wait_for(reconciler.queue.wait_idle(), 20)
    finally:
        for gw, _, reconciler, task in opened:
            reconciler.queue.shutdown()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await gw.store.close()


def applied(gw: Gateway) -> int:
    value = gw.metrics.registry.get_sample_value(
        "shellgate_driver_events_total", {"driver": "fake", "result": "applied"}
    )
    return int(value or 0)


async def test_every_replica_gets_every_event_and_each_is_written_once(
    store: Store, store_url: str
) -> None:
    created = await store.create_message(sandbox_message("shared"))
    sandbox_id = created.metadata.id
    start_version = created.metadata.resource_version
    async with replicas(store_url) as running:
        for revision in range(1, EVENTS + 1):
            # Each event alternates the Ready condition, so every one changes the row.
            state = ready if revision % 2 else suspended
            for _, driver in running:
                driver.emit(SnapshotEvent(state(sandbox_id, revision)))
            # One event at a time, so none is coalesced away before some replica writes it.
            await until_version(store, sandbox_id, start_version + revision)
    final = await store.get("sandbox", sandbox_id)
    assert final is not None
    assert final.resource_version == start_version + EVENTS  # one write per event
    assert sum(applied(gw) for gw, _ in running) == EVENTS


async def until_version(store: Store, sandbox_id: str, version: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:
        record = await store.get("sandbox", sandbox_id)
        assert record is not None
        assert record.resource_version <= version, "an event was written more than once"
        if record.resource_version == version:
            return
        if loop.time() > deadline:
            raise AssertionError(f"version {record.resource_version}, expected {version}")
        await asyncio.sleep(0.01)
