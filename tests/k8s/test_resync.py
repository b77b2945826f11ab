"""The periodic resync through ``reconcile(id)``, generic over drivers: each drift repair
(formerly the sweep's), and the races it must lose gracefully.

The driver here is the gateway tests' ``FakeDriver`` (its snapshots carry no revision); the
store is real, on SQLite and Postgres. The gateway's clock runs a second ahead so that every
row written by the test is older than the pass's start.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from shellgate.api import openshell_pb2 as P
from shellgate.controller.gateway import Gateway, wall_clock_ms
from shellgate.controller.metrics import Metrics
from shellgate.controller.reconcile.loops import attach_reconcilers
from shellgate.controller.reconcile.sandboxes import jittered
from shellgate.reconcilers.sandbox import MISSING_REASON, is_marked_missing, mark_compute_missing
from shellgate.reconcilers.snapshot import DriverSnapshot
from shellgate.store import Store
from tests.k8s.conftest import until
from tests.support.fake_driver import FakeDriver, ready
from tests.support.objects import sandbox as sandbox_message
from tests.support.reconcile import resync_once
from tests.support.sealing import new_sealer

pytestmark = pytest.mark.timeout(30)


def ahead() -> int:
    return wall_clock_ms() + 1000


@pytest.fixture
async def gw(store: Store) -> AsyncIterator[Gateway]:
    driver = FakeDriver(auto_ready=False)
    await driver.start()
    yield Gateway(
        sealer=new_sealer(),
        store=store,
        driver=driver,
        metrics=Metrics(),
        replica_id="t",
        clock_ms=ahead,
    )
    await driver.close()


def fake(gw: Gateway) -> FakeDriver:
    assert isinstance(gw.driver, FakeDriver)
    return gw.driver


async def row(gw: Gateway, name: str, phase: int, *, backed: bool = True) -> str:
    message = sandbox_message(name)
    message.status.phase = phase
    created = await gw.store.create_message(message)
    if backed:
        fake(gw).sandboxes[created.metadata.id] = created
    return created.metadata.id


async def phase_of(gw: Gateway, sandbox_id: str) -> int | None:
    found = await gw.store.get_message(P.Sandbox, sandbox_id)
    return None if found is None else found.status.phase


# ---- the pure parts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "becomes_error"),
    [
        (P.SANDBOX_PHASE_STOPPING, True),
        (P.SANDBOX_PHASE_STOPPED, True),
        (P.SANDBOX_PHASE_STARTING, True),
        (P.SANDBOX_PHASE_READY, False),
        (P.SANDBOX_PHASE_PROVISIONING, False),
        (P.SANDBOX_PHASE_DELETING, False),
    ],
)
def test_mark_compute_missing(phase: int, becomes_error: bool) -> None:
    sandbox = sandbox_message("m")
    sandbox.status.phase = phase
    sandbox.status.conditions.add(type="Ready", status="True", reason="DependenciesReady")
    sandbox.status.conditions.add(type="Suspended", status="True", reason="PodTerminated")
    before = P.Sandbox()
    before.CopyFrom(sandbox)
    after = mark_compute_missing(1234)(sandbox)
    if not becomes_error:
        assert after == before
        return
    assert after.status.phase == P.SANDBOX_PHASE_ERROR
    assert [(c.type, c.status, c.reason) for c in after.status.conditions] == [
        ("Ready", "False", MISSING_REASON),
        ("Suspended", "True", "PodTerminated"),
    ]
    assert after.status.conditions[0].transition_time.ToMilliseconds() == 1234
    assert is_marked_missing(after)


def test_jitter_stays_within_twenty_percent() -> None:
    rng = random.Random(7)
    delays = [jittered(60, rng) for _ in range(1000)]
    assert 48 <= min(delays) < 50 and 70 < max(delays) <= 72


# ---- repairs ------------------------------------------------------------------------------------


async def test_rows_are_resynced_from_the_listing(gw: Gateway) -> None:
    sandbox_id = await row(gw, "lagging", P.SANDBOX_PHASE_PROVISIONING)
    assert await resync_once(gw, grace_seconds=0) == {"resynced": 1}
    assert await phase_of(gw, sandbox_id) == P.SANDBOX_PHASE_READY
    assert await resync_once(gw, grace_seconds=0) == {}


async def test_missing_objects_respect_the_grace_period(gw: Gateway) -> None:
    sandbox_id = await row(gw, "young", P.SANDBOX_PHASE_READY, backed=False)
    assert await resync_once(gw, grace_seconds=300) == {}
    assert await phase_of(gw, sandbox_id) == P.SANDBOX_PHASE_READY
    assert await resync_once(gw, grace_seconds=0) == {"removed": 1}
    assert await phase_of(gw, sandbox_id) is None


async def test_missing_objects_of_transitions_become_errors_and_stay(gw: Gateway) -> None:
    ids = [
        await row(gw, f"lost-{i}", phase, backed=False)
        for i, phase in enumerate(
            (P.SANDBOX_PHASE_STOPPING, P.SANDBOX_PHASE_STOPPED, P.SANDBOX_PHASE_STARTING)
        )
    ]
    deleting = await row(gw, "half-deleted", P.SANDBOX_PHASE_DELETING, backed=False)
    assert await resync_once(gw, grace_seconds=0) == {"marked_error": 3, "removed": 1}
    assert [await phase_of(gw, i) for i in ids] == [P.SANDBOX_PHASE_ERROR] * 3
    assert await phase_of(gw, deleting) is None
    assert await resync_once(gw, grace_seconds=0) == {}  # marked errors are kept
    assert [await phase_of(gw, i) for i in ids] == [P.SANDBOX_PHASE_ERROR] * 3


async def test_orphan_objects_are_deleted(gw: Gateway) -> None:
    orphan = sandbox_message("orphan")
    fake(gw).sandboxes[orphan.metadata.id] = orphan
    assert await resync_once(gw, grace_seconds=0) == {"orphan_deleted": 1}
    assert ("delete", orphan.metadata.id) in fake(gw).calls


async def test_stuck_transitions_are_reissued(gw: Gateway) -> None:
    stopping = await row(gw, "stuck-stop", P.SANDBOX_PHASE_STOPPING)
    starting = await row(gw, "stuck-start", P.SANDBOX_PHASE_STARTING)
    # FakeDriver reports them READY; STOPPING stays STOPPING on READY, STARTING goes READY.
    counts = await resync_once(gw, grace_seconds=0, stuck_seconds=0)
    assert counts == {"reissued": 1, "resynced": 1}
    assert ("stop", stopping) in fake(gw).calls
    assert await phase_of(gw, starting) == P.SANDBOX_PHASE_READY
    assert await resync_once(gw, grace_seconds=0, stuck_seconds=3600) == {}


async def test_rows_written_after_the_listing_started_are_left_alone(store: Store) -> None:
    driver = FakeDriver(auto_ready=False)
    pass_start = wall_clock_ms() - 1
    gw = Gateway(
        sealer=new_sealer(),
        store=store,
        driver=driver,
        metrics=Metrics(),
        replica_id="t",
        clock_ms=lambda: pass_start,
    )
    written: list[str] = []

    async def listing() -> list[DriverSnapshot]:
        # Another replica creates a row while this pass lists the driver; the listing
        # already reports it READY, which would be a resync if the row were not skipped.
        written.append(await row(gw, "during", P.SANDBOX_PHASE_PROVISIONING))
        return [ready(written[0], None)]

    driver.list_sandboxes = listing  # type: ignore[method-assign]
    assert await resync_once(gw, grace_seconds=0) == {}
    assert await phase_of(gw, written[0]) == P.SANDBOX_PHASE_PROVISIONING


async def test_a_row_changed_meanwhile_is_a_conflict_not_a_repair(gw: Gateway) -> None:
    sandbox_id = await row(gw, "racing", P.SANDBOX_PHASE_STOPPED, backed=False)

    async def racing_get(checked_id: str) -> DriverSnapshot | None:
        # Another replica moves the row on between our read and our write.
        await gw.store.update_message_cas(
            P.Sandbox, checked_id, _set_phase(P.SANDBOX_PHASE_STARTING)
        )
        return None

    fake(gw).get_sandbox = racing_get  # type: ignore[method-assign]
    assert await resync_once(gw, grace_seconds=0) == {"conflict": 1}
    assert await phase_of(gw, sandbox_id) == P.SANDBOX_PHASE_STARTING
    conflicts = gw.metrics.registry.get_sample_value(
        "shellgate_reconcile_total", {"controller": "sandbox", "result": "conflict"}
    )
    assert conflicts == 1


def _set_phase(phase: int):  # type: ignore[no-untyped-def]
    def mutate(sandbox: P.Sandbox) -> P.Sandbox:
        sandbox.status.phase = phase
        return sandbox

    return mutate


async def test_owner_routed_drivers_only_sweep_their_own(gw: Gateway) -> None:
    driver = fake(gw)
    driver.routes_by_owner = True
    driver.owns = lambda sandbox_id: False  # type: ignore[method-assign]
    await row(gw, "foreign", P.SANDBOX_PHASE_READY, backed=False)
    orphan = sandbox_message("foreign-orphan")
    driver.sandboxes[orphan.metadata.id] = orphan
    assert await resync_once(gw, grace_seconds=0) == {}


async def test_a_failed_listing_counts_an_error(gw: Gateway) -> None:
    from shellgate.controller.drivers.base import DriverError

    async def broken() -> list[DriverSnapshot]:
        raise DriverError("API down")

    fake(gw).list_sandboxes = broken  # type: ignore[method-assign]
    assert await resync_once(gw) == {"error": 1}


async def test_the_loop_resyncs_until_stopped(gw: Gateway) -> None:
    orphan = sandbox_message("looped")
    loops = attach_reconcilers(gw, grace_seconds=0)
    loops.start(0.02)
    try:
        await until(lambda: loops.sandboxes.queue.idle)
        fake(gw).sandboxes[orphan.metadata.id] = orphan  # appears after the first resync
        await until(lambda: ("delete", orphan.metadata.id) in fake(gw).calls)
    finally:
        await loops.stop()
    duration = gw.metrics.registry.get_sample_value(
        "shellgate_reconcile_duration_seconds_count", {"controller": "sandbox"}
    )
    assert duration is not None and duration >= 1
