"""The incremental resync pass: rows that need nothing are not reconciled (and, once found
quiet, not even decoded), rows that need work still are, and a replica serves while its
first pass is still running.

The store is real (SQLite and Postgres); the driver is the gateway tests' ``FakeDriver``,
whose listing a test changes behind the reconciler's back (a watch event that never came).
The companion test at the end breaks the pass's filter (skip on the row's version alone)
and shows that the repair test's check then fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from shellgate.api import datamodel_pb2, openshell_pb2_grpc
from shellgate.api import openshell_pb2 as P
from shellgate.controller.app.options import options_from_args
from shellgate.controller.app.serve import add_command, serve
from shellgate.controller.gateway import Gateway, wall_clock_ms
from shellgate.controller.metrics import Metrics
from shellgate.controller.reconcile import sandboxes
from shellgate.controller.reconcile.sandboxes import PassCounts, Quiet, SandboxReconciler
from shellgate.reconcilers.snapshot import DriverCondition, DriverSnapshot
from shellgate.store import Store, connect
from shellgate.store.secrets import Keyring
from tests.support.fake_driver import FakeDriver, suspended
from tests.support.objects import sandbox as sandbox_message
from tests.support.reconcile import reconcile_counts
from tests.support.sealing import new_sealer

pytestmark = pytest.mark.timeout(60)

ROWS = 12
PAGE = 5  # several pages per pass


class Clock:
    """The gateway's clock, a second ahead of the rows' writes, moved on by the tests."""

    def __init__(self) -> None:
        self.offset_ms = 1000

    def __call__(self) -> int:
        return wall_clock_ms() + self.offset_ms


class ListingDriver(FakeDriver):
    """``FakeDriver`` whose listing a test may change without emitting an event."""

    def __init__(self) -> None:
        super().__init__(auto_ready=False)
        self.listed: dict[str, Callable[[str, int | None], DriverSnapshot]] = {}

    async def list_sandboxes(self) -> list[DriverSnapshot]:
        found = await super().list_sandboxes()
        return [self._listed(s) for s in found]

    def _listed(self, snapshot: DriverSnapshot) -> DriverSnapshot:
        make = self.listed.get(snapshot.sandbox_id)
        return snapshot if make is None else make(snapshot.sandbox_id, None)


@pytest.fixture
async def gw(store: Store, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Gateway]:
    monkeypatch.setattr(sandboxes, "PAGE_SIZE", PAGE)
    driver = ListingDriver()
    await driver.start()
    yield Gateway(
        sealer=new_sealer(),
        store=store,
        driver=driver,
        metrics=Metrics(),
        replica_id="t",
        clock_ms=Clock(),
    )
    await driver.close()


def listing(gw: Gateway) -> ListingDriver:
    assert isinstance(gw.driver, ListingDriver)
    return gw.driver


def reconciles(gw: Gateway) -> int:
    """Every reconcile the sandbox controller ran, whatever its result (noop included)."""
    total = 0.0
    for metric in gw.metrics.registry.collect():
        if metric.name == "shellgate_reconcile":
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels["controller"] == "sandbox":
                    total += sample.value
    return int(total)


async def backed_rows(gw: Gateway, count: int = ROWS) -> list[str]:
    ids = []
    for i in range(count):
        message = sandbox_message(f"quiet-{i}")
        message.status.phase = P.SANDBOX_PHASE_PROVISIONING
        created = await gw.store.create_message(message)
        listing(gw).sandboxes[created.metadata.id] = created
        ids.append(created.metadata.id)
    return ids


class Passes:
    """One reconciler whose workers run for the whole test; ``run`` makes one resync pass
    and waits until its queue is idle, returning the repairs made (``reconcile_counts``)."""

    def __init__(self, gw: Gateway, **kwargs: float) -> None:
        self.gw = gw
        self.reconciler = SandboxReconciler(gw, grace_seconds=0.0, **kwargs)
        self.workers = asyncio.create_task(self.reconciler.run(workers=2))

    async def run(self) -> dict[str, int]:
        before = reconcile_counts(self.gw)
        await self.reconciler.resync()
        await asyncio.wait_for(self.reconciler.queue.wait_idle(), 10)
        after = reconcile_counts(self.gw)
        return {k: after[k] - before[k] for k in after if after[k] != before[k]}

    @property
    def last(self) -> PassCounts:
        return self.reconciler.last_pass

    async def settle(self) -> None:
        """The first pass brings every row up to the listing; the second finds them quiet."""
        assert await self.run() == {"resynced": ROWS}
        assert await self.run() == {}

    async def close(self) -> None:
        self.reconciler.queue.shutdown()
        self.workers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.workers


@contextlib.asynccontextmanager
async def passes(gw: Gateway, **kwargs: float) -> AsyncIterator[Passes]:
    made = Passes(gw, **kwargs)
    try:
        yield made
    finally:
        await made.close()


async def phase_of(gw: Gateway, sandbox_id: str) -> int | None:
    found = await gw.store.get_message(P.Sandbox, sandbox_id)
    return None if found is None else found.status.phase


# ---- rows that need nothing ---------------------------------------------------------------------


async def test_rows_that_need_nothing_are_not_reconciled_then_not_decoded(gw: Gateway) -> None:
    await backed_rows(gw)
    async with passes(gw) as sync:
        assert await sync.run() == {"resynced": ROWS}
        before = reconciles(gw)
        assert await sync.run() == {}
        assert reconciles(gw) == before  # decided from the page: no reconcile at all
        assert sync.last == PassCounts(settled=ROWS)
        assert await sync.run() == {}
        assert reconciles(gw) == before
        assert sync.last == PassCounts(unchanged=ROWS)  # not even decoded


async def test_every_nth_pass_decides_every_row_again(gw: Gateway) -> None:
    await backed_rows(gw)
    async with passes(gw) as sync:
        sync.reconciler.full_pass_every = 3
        await sync.settle()  # passes 1 and 2: the rows are quiet, remembered
        await sync.run()  # pass 3: a full pass
        assert sync.last == PassCounts(settled=ROWS)


# ---- rows that need work ------------------------------------------------------------------------


async def test_a_driver_change_no_event_announced_is_repaired(gw: Gateway) -> None:
    ids = await backed_rows(gw)
    async with passes(gw) as sync:
        await sync.settle()
        listing(gw).listed[ids[7]] = suspended  # the object stopped; its watch event was lost
        assert await sync.run() == {"resynced": 1}
        assert await phase_of(gw, ids[7]) == P.SANDBOX_PHASE_STOPPED
        assert sync.last == PassCounts(unchanged=ROWS - 1, queued=1)


async def test_an_object_that_vanished_unannounced_is_repaired(gw: Gateway) -> None:
    ids = await backed_rows(gw)
    async with passes(gw) as sync:
        await sync.settle()
        del listing(gw).sandboxes[ids[3]]
        assert await sync.run() == {"removed": 1}
        assert await phase_of(gw, ids[3]) is None


async def test_a_row_written_elsewhere_is_decided_again(gw: Gateway) -> None:
    ids = await backed_rows(gw)
    async with passes(gw) as sync:
        await sync.settle()

        def provisioning(sandbox: P.Sandbox) -> P.Sandbox:
            sandbox.status.phase = P.SANDBOX_PHASE_PROVISIONING  # the listing says READY
            return sandbox

        await gw.repos.sandboxes.update(ids[0], provisioning)
        assert await sync.run() == {"resynced": 1}
        assert await phase_of(gw, ids[0]) == P.SANDBOX_PHASE_READY


def not_ready(sandbox_id: str, revision: int | None) -> DriverSnapshot:
    return DriverSnapshot(
        sandbox_id, revision, (DriverCondition("Ready", "False", "DependenciesNotReady"),)
    )


async def test_time_alone_brings_the_provisioning_deadline(gw: Gateway) -> None:
    """Nothing to do now is not quiet when a deadline lies ahead: the row is decided on every
    pass, and the pass after the deadline marks it ERROR."""
    ids = await backed_rows(gw, 1)
    listing(gw).listed[ids[0]] = not_ready
    async with passes(gw, provisioning_deadline_seconds=60) as sync:
        assert await sync.run() == {"resynced": 1}  # the deadline is stamped
        assert await sync.run() == {}
        assert sync.last == PassCounts(settled=1)  # before the deadline: decided, not quiet
        assert await sync.run() == {}
        assert sync.last == PassCounts(settled=1)
        assert isinstance(gw.clock_ms, Clock)
        gw.clock_ms.offset_ms += 61_000
        assert await sync.run() == {"deadline_exceeded": 1}
        assert await phase_of(gw, ids[0]) == P.SANDBOX_PHASE_ERROR


# ---- the filter, broken -------------------------------------------------------------------------


def version_only(seen: Quiet | None, version: int, listed: object, mine: bool) -> bool:
    """A filter too aggressive: the row's version alone, as if the driver could not change."""
    return seen is not None and seen.version == version


async def test_the_repair_test_fails_when_the_filter_ignores_the_driver(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandboxes, "still_quiet", version_only)
    with pytest.raises(AssertionError):
        await test_a_driver_change_no_event_announced_is_repaired(gw)


async def test_the_deadline_test_fails_when_every_nothing_counts_as_quiet(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandboxes, "stays_quiet", lambda *_args, **_kwargs: True)
    with pytest.raises(AssertionError):
        await test_time_alone_brings_the_provisioning_deadline(gw)


# ---- serving while the first pass runs ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_server_answers_while_its_first_pass_is_held(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``serve`` on a store with rows; the first pass is held after its first page. Health
    and GetSandbox are answered meanwhile, and the pass finishes once released."""
    monkeypatch.setattr(sandboxes, "PAGE_SIZE", PAGE)
    store = await connect(store_url)
    try:
        name = ""
        for i in range(ROWS):
            created = await store.create_message(sandbox_message(f"held-{i}"))
            name = created.metadata.name
    finally:
        await store.close()
    held, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def hold(self: SandboxReconciler, counts: PassCounts) -> None:
        if not release.is_set():
            held.set()
            await release.wait()
        elif counts.settled + counts.unchanged + counts.queued >= ROWS:
            finished.set()

    monkeypatch.setattr(SandboxReconciler, "after_page", hold)
    port = _free_port()
    key = tmp_path / "key"
    Keyring.create_file(key)
    parser = argparse.ArgumentParser()
    add_command(parser.add_subparsers())
    config = options_from_args(
        parser.parse_args(
            [
                "serve",
                *("--database-url", store_url, "--listen", f"127.0.0.1:{port}"),
                *("--http-listen", f"127.0.0.1:{_free_port()}", "--replica-id", "held"),
                *("--state-dir", str(tmp_path / "state"), "--encryption-key-file", str(key)),
            ]
        )
    )
    stop = asyncio.Event()
    server = asyncio.create_task(serve(config, stop=stop))
    try:
        await asyncio.wait_for(held.wait(), 30)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), wait_for_ready=True
            )
            got = await openshell_pb2_grpc.OpenShellStub(channel).GetSandbox(
                P.GetSandboxRequest(
                    name=name,
                    workspace_scope=datamodel_pb2.WorkspaceSelector(workspace="default"),
                )
            )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert got.sandbox.metadata.name == name
        assert not release.is_set() and not finished.is_set()  # the pass is still held
        release.set()
        await asyncio.wait_for(finished.wait(), 30)
    finally:
        release.set()
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(server, 30)
