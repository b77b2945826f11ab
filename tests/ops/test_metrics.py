"""After a workload, every metric family has the values the workload implies."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shellgate import __version__
from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.controller.app.health import HealthState, start_http
from shellgate.controller.drivers.base import SnapshotEvent
from shellgate.store import Conflict, Store
from tests.gateway.conftest import Running
from tests.support.fake_driver import ready
from tests.support.objects import raw_bump
from tests.support.processes import free_port
from tests.support.wait import eventually

P = openshell_pb2
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
async def http(gw: Running) -> AsyncIterator[tuple[str, HealthState]]:
    state = HealthState(gw.gateway)
    port = free_port()
    runner = await start_http(state, "127.0.0.1", port)
    yield f"http://127.0.0.1:{port}", state
    await runner.cleanup()


async def scrape(url: str) -> Samples:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def workload(gw: Running, store: Store, store_url: str) -> None:
    gw.driver.auto_ready = False
    for name in ("a", "b", "c"):
        await gw.stub.CreateSandbox(P.CreateSandboxRequest(name=name, spec=P.SandboxSpec()))
    a = await store.get_by_name("sandbox", "a")
    assert a is not None

    # One at a time: events about one sandbox that wait together are coalesced to the latest.
    async def events_counted() -> int:
        return sum(
            int(sample.value)
            for family in gw.gateway.metrics.driver_events.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        )

    # applied; stale (older); no-op (no revision to order by, and nothing else changes)
    for counted, revision in enumerate((5, 4, None), start=1):
        gw.driver.emit(SnapshotEvent(ready(a.id, revision)))
        await eventually(events_counted, lambda seen, counted=counted: seen == counted)  # type: ignore[misc]

    async def phase() -> int:
        return (await gw.stub.GetSandbox(P.GetSandboxRequest(name="a"))).sandbox.status.phase

    await eventually(phase, lambda p: p == P.SANDBOX_PHASE_READY)
    with pytest.raises(grpc.aio.AioRpcError):  # NOT_FOUND
        await gw.stub.GetSandbox(P.GetSandboxRequest(name="ghost"))
    provider = datamodel_pb2.Provider(type="github", credentials={"T": "x"})
    provider.metadata.name = "gh"
    await gw.stub.CreateProvider(P.CreateProviderRequest(provider=provider))
    with pytest.raises(grpc.aio.AioRpcError):  # ABORTED: a stale client version
        await gw.stub.AttachSandboxProvider(
            P.AttachSandboxProviderRequest(sandbox="b", provider="gh", expected_resource_version=9)
        )

    def always_contested(message: P.Sandbox) -> P.Sandbox:
        raw_bump(store_url, message.metadata.id)
        message.status.phase = P.SANDBOX_PHASE_ERROR
        return message

    c = await store.get_by_name("sandbox", "c")
    assert c is not None
    store.retry = type(store.retry)(attempts=5, base_delay=0.001, max_delay=0.002)
    with pytest.raises(Conflict):
        await store.update_message_cas(P.Sandbox, c.id, always_contested)


async def test_every_family_after_a_workload(
    gw: Running, http: tuple[str, HealthState], store_url: str
) -> None:
    url, state = http
    store = gw.gateway.store
    await state.ping_once()
    await workload(gw, store, store_url)
    stream = gw.stub.WatchSandbox(P.WatchSandboxRequest(sandbox="b", follow_status=True))
    await stream.read()
    await gw.stub.StopSandbox(P.StopSandboxRequest(name="b"))  # a change the stream hears of
    await stream.read()
    s = await scrape(url)

    assert value(s, "shellgate_build_info", version=__version__) == 1
    assert value(s, "shellgate_grpc_requests_total", method="CreateSandbox", code="OK") == 3
    assert value(s, "shellgate_grpc_requests_total", method="GetSandbox", code="NOT_FOUND") == 1
    assert (
        value(s, "shellgate_grpc_requests_total", method="AttachSandboxProvider", code="ABORTED")
        == 1
    )
    assert value(s, "shellgate_grpc_request_duration_seconds_count", method="CreateSandbox") == 3

    assert value(s, "shellgate_driver_events_total", driver="fake", result="applied") == 1
    assert value(s, "shellgate_driver_events_total", driver="fake", result="stale") == 1
    assert value(s, "shellgate_driver_events_total", driver="fake", result="noop") == 1
    assert value(s, "shellgate_reconcile_total", controller="sandbox", result="applied") == 1
    assert value(s, "shellgate_reconcile_total", controller="sandbox", result="stale") == 1
    assert value(s, "shellgate_reconcile_duration_seconds_count", controller="sandbox") >= 3
    assert value(s, "shellgate_workqueue_adds_total", queue="sandbox") >= 3
    assert value(s, "shellgate_workqueue_depth", queue="sandbox") >= 0

    # CAS: the applied snapshot and the stop were written; stale and no-op snapshots were
    # decided on the row read and not written at all; the stale client attach and the 5
    # contested attempts were conflicts.
    assert (
        value(s, "shellgate_store_cas_attempts_total", object_type="sandbox", result="written") == 2
    )
    assert value(s, "shellgate_store_cas_attempts_total", object_type="sandbox", result="noop") == 0
    assert (
        value(s, "shellgate_store_cas_attempts_total", object_type="sandbox", result="conflict")
        == 6
    )
    assert value(s, "shellgate_store_cas_exhausted_total", object_type="sandbox") == 1
    assert (
        value(s, "shellgate_store_cas_attempts_per_call_bucket", object_type="sandbox", le="1.0")
        == 3  # the applied snapshot, the stop, the stale attach (no call for unchanged ones)
    )
    assert (
        value(s, "shellgate_store_cas_attempts_per_call_bucket", object_type="sandbox", le="5.0")
        == 4
    )
    backend = store.backend
    assert (
        value(
            s,
            "shellgate_store_operation_duration_seconds_count",
            backend=backend,
            operation="put_if",
        )
        >= 9
    )

    assert value(s, "shellgate_sandboxes", phase="ready") == 1
    assert value(s, "shellgate_sandboxes", phase="stopping") == 1
    assert value(s, "shellgate_sandboxes", phase="provisioning") == 1
    assert value(s, "shellgate_watch_streams") == 1
    assert 0 <= value(s, "shellgate_change_feed_lag_seconds") < 5
    assert value(s, "shellgate_store_up") == 1
    assert value(s, "shellgate_driver_watch_up") == 1
    stream.cancel()
    await eventually(lambda: scrape(url), lambda m: value(m, "shellgate_watch_streams") == 0)


async def test_readyz_reports_each_check(gw: Running, http: tuple[str, HealthState]) -> None:
    url, state = http
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/readyz") as response:
            assert response.status == 503  # no ping yet
            body = await response.json()
            assert body["checks"]["store"]["status"] == "unknown"
        await state.ping_once()
        async with session.get(f"{url}/readyz") as response:
            assert response.status == 200
            body = await response.json()
            assert body == {
                "status": "ready",
                "checks": {"store": {"status": "ok"}, "driver": {"status": "ok"}},
            }
        await gw.gateway.store.close()
        await state.ping_once()
        async with session.get(f"{url}/readyz") as response:
            assert response.status == 503
            body = await response.json()
            # Names and states only: no database error text, no replica or host name.
            assert body == {
                "status": "not ready",
                "checks": {"store": {"status": "failing"}, "driver": {"status": "ok"}},
            }
        async with session.get(f"{url}/healthz") as response:
            assert response.status == 200  # alive, whatever the database does


async def test_grpc_health_and_reflection(gw: Running) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    health = health_pb2_grpc.HealthStub(gw.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service="openshell.v1.OpenShell"))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(gw.channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    services = set()
    async for response in responses:
        services = {s.name for s in response.list_services_response.service}
        break
    assert "openshell.v1.OpenShell" in services


async def test_concurrent_scrapes_share_one_aggregate_query(
    gw: Running, http: tuple[str, HealthState]
) -> None:
    """Eight scrapes at once took 20 s and 1.4 GiB when each decoded every sandbox."""
    import asyncio

    url, state = http
    for name in ("a", "b", "c"):
        await gw.stub.CreateSandbox(P.CreateSandboxRequest(name=name, spec=P.SandboxSpec()))
    await gw.stub.StopSandbox(P.StopSandboxRequest(name="c"))
    before = state.gauge_queries
    pages = await asyncio.gather(*(scrape(url) for _ in range(8)))
    assert state.gauge_queries - before == 1
    phases = [name.removeprefix("SANDBOX_PHASE_").lower() for name, _ in P.SandboxPhase.items()]
    truth = [(await gw.stub.GetSandbox(P.GetSandboxRequest(name=n))).sandbox for n in "abc"]
    for s in pages:
        counted = {p: value(s, "shellgate_sandboxes", phase=p) for p in phases}
        assert sum(counted.values()) == 3
        stopped = counted["stopping"] + counted["stopped"]
        stopping_or_stopped = (P.SANDBOX_PHASE_STOPPING, P.SANDBOX_PHASE_STOPPED)
        assert stopped == 1 == sum(t.status.phase in stopping_or_stopped for t in truth)


async def test_rows_without_their_phase_column_are_filled_once(store: Store) -> None:
    """Rows written before the status column held the phase count as "unknown" until
    ``fill_phase_column`` gives them theirs; after that it costs one aggregate query."""
    from shellgate.store import Repositories, WriteCondition
    from tests.support.sealing import new_sealer

    repos = Repositories(store, new_sealer())
    legacy = P.Sandbox()
    legacy.metadata.id, legacy.metadata.name = "old", "old"
    legacy.status.phase = P.SANDBOX_PHASE_READY
    await store.put_if(
        "sandbox", "old", "old", legacy.SerializeToString(), {}, WriteCondition.MUST_CREATE
    )
    fresh = P.Sandbox()
    fresh.metadata.id, fresh.metadata.name = "new", "new"
    fresh.status.phase = P.SANDBOX_PHASE_STOPPED
    await repos.sandboxes.create(fresh)
    assert await repos.sandboxes.phase_counts() == {"unknown": 1, "stopped": 1}
    assert await repos.sandboxes.fill_phase_column() == 1
    assert await repos.sandboxes.phase_counts() == {"ready": 1, "stopped": 1}
    assert await repos.sandboxes.fill_phase_column() == 0
    record = await store.get("sandbox", "old")
    assert record is not None and record.resource_version == 2


async def test_filling_the_phase_column_racing_phase_changes_ends_consistent(
    store: Store,
) -> None:
    """The fill writes at the version it read; a phase change in between wins and brings its
    own status column, so the column ends equal to every row's phase."""
    import asyncio

    from shellgate.store import Repositories
    from tests.support.sealing import new_sealer

    repos = Repositories(store, new_sealer())
    ids = [f"s{n}" for n in range(30)]
    await seed_rows_without_phase_column(store, ids)

    async def change_phases() -> None:
        for sandbox_id in ids[::2]:
            await repos.sandboxes.update(sandbox_id, to_ready)
            await asyncio.sleep(0)

    await asyncio.gather(repos.sandboxes.fill_phase_column(), change_phases())
    # A fill that lost its race lost it to an update, which wrote the column itself.
    assert await repos.sandboxes.phase_counts() == {"ready": 15, "provisioning": 15}


@pytest.mark.parametrize("guarded", [True, False], ids=["guarded", "guard-removed"])
async def test_a_fill_forced_behind_phase_changes_never_undoes_them(
    store: Store, monkeypatch: pytest.MonkeyPatch, guarded: bool
) -> None:
    """Forced: every phase change lands between the fill's read and its writes. With the
    guard (the fill writes at the version it read) the changes stand; with it removed (the
    fill writes its stale copy at whatever version is current) they are undone, which is
    what this test must then see."""
    from shellgate.store import Repositories
    from shellgate.store.repositories.sandboxes import SandboxRepository
    from tests.support.sealing import new_sealer

    repos = Repositories(store, new_sealer())
    ids = [f"s{n}" for n in range(6)]
    await seed_rows_without_phase_column(store, ids)

    read_page = SandboxRepository.list_records

    async def page_then_changes(self: SandboxRepository, **kwargs: object):  # type: ignore[no-untyped-def]
        page = await read_page(self, **kwargs)
        for sandbox_id in ids:
            await repos.sandboxes.update(sandbox_id, to_ready)
        return page

    monkeypatch.setattr(SandboxRepository, "list_records", page_then_changes)
    if not guarded:
        fill_at_read_version = SandboxRepository._fill_phase

        async def fill_at_current_version(self: SandboxRepository, record):  # type: ignore[no-untyped-def]
            current = await store.get("sandbox", record.id)
            assert current is not None
            stale = dataclasses.replace(record, resource_version=current.resource_version)
            return await fill_at_read_version(self, stale)

        monkeypatch.setattr(SandboxRepository, "_fill_phase", fill_at_current_version)
    await repos.sandboxes.fill_phase_column()
    phases = [(await repos.sandboxes.get(i)).status.phase for i in ids]  # type: ignore[union-attr]
    changes_stand = phases == [P.SANDBOX_PHASE_READY] * len(ids)
    assert changes_stand is guarded


async def test_unfilled_rows_add_to_the_unknown_phase_count(store: Store) -> None:
    from shellgate.store import Repositories, WriteCondition
    from tests.support.sealing import new_sealer

    repos = Repositories(store, new_sealer())
    legacy = P.Sandbox()
    legacy.metadata.id = legacy.metadata.name = "old"
    await store.put_if(
        "sandbox", "old", "old", legacy.SerializeToString(), {}, WriteCondition.MUST_CREATE
    )
    lost = P.Sandbox()
    lost.metadata.id = lost.metadata.name = "lost"
    lost.status.phase = P.SANDBOX_PHASE_UNKNOWN
    await repos.sandboxes.create(lost)
    assert await repos.sandboxes.phase_counts() == {"unknown": 2}


async def seed_rows_without_phase_column(store: Store, ids: list[str]) -> None:
    """PROVISIONING rows as a version that did not keep the phase column wrote them."""
    from shellgate.store import WriteCondition

    for sandbox_id in ids:
        legacy = P.Sandbox()
        legacy.metadata.id = legacy.metadata.name = sandbox_id
        legacy.status.phase = P.SANDBOX_PHASE_PROVISIONING
        payload = legacy.SerializeToString()
        await store.put_if(
            "sandbox", sandbox_id, sandbox_id, payload, {}, WriteCondition.MUST_CREATE
        )


def to_ready(sandbox: P.Sandbox) -> P.Sandbox:
    sandbox.status.phase = P.SANDBOX_PHASE_READY
    return sandbox
