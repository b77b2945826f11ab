"""Sandbox RPCs through a real gRPC socket, on SQLite and Postgres."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.controller.drivers.base import SnapshotEvent
from tests.gateway.conftest import Running
from tests.support.fake_driver import ready
from tests.support.wait import eventually

P = openshell_pb2
WS = datamodel_pb2.WorkspaceSelector


def create_request(name: str, **kwargs: object) -> P.CreateSandboxRequest:
    return P.CreateSandboxRequest(name=name, spec=P.SandboxSpec(), **kwargs)  # type: ignore[arg-type]


async def get(gw: Running, name: str, workspace: str = "") -> P.Sandbox:
    response = await gw.stub.GetSandbox(
        P.GetSandboxRequest(name=name, workspace_scope=WS(workspace=workspace))
    )
    return response.sandbox


async def phase_of(gw: Running, name: str) -> int:
    return (await get(gw, name)).status.phase


async def test_create_returns_version_one_and_becomes_ready(gw: Running) -> None:
    response = await gw.stub.CreateSandbox(create_request("alpha", labels={"env": "dev"}))
    created = response.sandbox
    assert created.metadata.id and created.metadata.resource_version == 1
    assert created.metadata.workspace == "default"
    assert created.status.phase == P.SANDBOX_PHASE_PROVISIONING
    assert ("create", created.metadata.id) in gw.driver.calls
    await eventually(lambda: phase_of(gw, "alpha"), lambda p: p == P.SANDBOX_PHASE_READY)
    record = await gw.gateway.store.get("sandbox", created.metadata.id)
    assert record is not None and record.labels == {"env": "dev"}


async def test_create_generates_a_name_when_none_is_given(gw: Running) -> None:
    response = await gw.stub.CreateSandbox(P.CreateSandboxRequest(spec=P.SandboxSpec()))
    name = response.sandbox.metadata.name
    assert len(name.split("-")) == 2 and name.replace("-", "").isalpha()


async def test_duplicate_create_is_already_exists(gw: Running) -> None:
    await gw.stub.CreateSandbox(create_request("alpha"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.CreateSandbox(create_request("alpha"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_concurrent_creates_one_ok_one_already_exists(gw: Running) -> None:
    results = await asyncio.gather(
        gw.stub.CreateSandbox(create_request("race")),
        gw.stub.CreateSandbox(create_request("race")),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(errors) == 1 and errors[0].code() == grpc.StatusCode.ALREADY_EXISTS
    page = await gw.stub.ListSandboxes(P.ListSandboxesRequest())
    assert [s.metadata.name for s in page.sandboxes] == ["race"]


async def test_failed_driver_create_leaves_nothing(gw: Running) -> None:
    gw.driver.fail_create = True
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.CreateSandbox(create_request("doomed"))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    page = await gw.stub.ListSandboxes(P.ListSandboxesRequest())
    assert list(page.sandboxes) == []


async def test_create_with_missing_provider_is_failed_precondition(gw: Running) -> None:
    request = create_request("alpha")
    request.spec.providers.append("nope")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.CreateSandbox(request)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (await gw.stub.ListSandboxes(P.ListSandboxesRequest())).sandboxes == []


async def test_get_missing_is_not_found(gw: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await get(gw, "ghost")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_selector_paging_and_workspaces(gw: Running) -> None:
    for n in range(5):
        labels = {"tier": "gold" if n % 2 == 0 else "silver"}
        await gw.stub.CreateSandbox(create_request(f"s{n}", labels=labels))
    await gw.stub.CreateSandbox(create_request("other", workspace_scope=WS(workspace="team")))
    gold = await gw.stub.ListSandboxes(P.ListSandboxesRequest(label_selector="tier=gold"))
    assert sorted(s.metadata.name for s in gold.sandboxes) == ["s0", "s2", "s4"]
    first = await gw.stub.ListSandboxes(P.ListSandboxesRequest(page_size=2))
    second = await gw.stub.ListSandboxes(
        P.ListSandboxesRequest(page_size=2, page_token=first.next_page_token)
    )
    third = await gw.stub.ListSandboxes(
        P.ListSandboxesRequest(page_size=2, page_token=second.next_page_token)
    )
    names = [s.metadata.name for page in (first, second, third) for s in page.sandboxes]
    assert sorted(names) == [f"s{n}" for n in range(5)] and third.next_page_token == ""
    every = await gw.stub.ListSandboxes(
        P.ListSandboxesRequest(workspace_scope=WS(all_workspaces=datamodel_pb2.AllWorkspaces()))
    )
    assert len(every.sandboxes) == 6
    team = await gw.stub.ListSandboxes(P.ListSandboxesRequest(workspace_scope=WS(workspace="team")))
    assert [s.metadata.name for s in team.sandboxes] == ["other"]


async def test_stop_answers_stopping_then_start_answers_starting(gw: Running) -> None:
    await gw.stub.CreateSandbox(create_request("alpha"))
    await eventually(lambda: phase_of(gw, "alpha"), lambda p: p == P.SANDBOX_PHASE_READY)
    stopped = await gw.stub.StopSandbox(P.StopSandboxRequest(name="alpha"))
    assert stopped.sandbox.status.phase == P.SANDBOX_PHASE_STOPPING
    await eventually(lambda: phase_of(gw, "alpha"), lambda p: p == P.SANDBOX_PHASE_STOPPED)
    again = await gw.stub.StopSandbox(P.StopSandboxRequest(name="alpha"))
    assert again.sandbox.status.phase == P.SANDBOX_PHASE_STOPPED
    started = await gw.stub.StartSandbox(P.StartSandboxRequest(name="alpha"))
    assert started.sandbox.status.phase == P.SANDBOX_PHASE_STARTING
    await eventually(lambda: phase_of(gw, "alpha"), lambda p: p == P.SANDBOX_PHASE_READY)


async def test_delete_moves_to_deleting_and_the_row_goes_when_the_driver_confirms(
    gw: Running,
) -> None:
    gw.driver.auto_ready = True
    created = (await gw.stub.CreateSandbox(create_request("alpha"))).sandbox
    response = await gw.stub.DeleteSandbox(P.DeleteSandboxRequest(name="alpha"))
    assert response.outcome == P.DELETION_OUTCOME_ACCEPTED
    assert response.sandbox_id == created.metadata.id

    async def exists() -> bool:
        return await gw.gateway.store.get("sandbox", created.metadata.id) is not None

    await eventually(exists, lambda present: not present)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.DeleteSandbox(P.DeleteSandboxRequest(name="alpha"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    absent = await gw.stub.DeleteSandbox(P.DeleteSandboxRequest(name="alpha", allow_missing=True))
    assert absent.outcome == P.DELETION_OUTCOME_ALREADY_ABSENT


async def test_delete_of_a_sandbox_the_driver_lost_completes_at_once(gw: Running) -> None:
    created = (await gw.stub.CreateSandbox(create_request("alpha"))).sandbox
    gw.driver.sandboxes.clear()
    response = await gw.stub.DeleteSandbox(P.DeleteSandboxRequest(name="alpha"))
    assert response.outcome == P.DELETION_OUTCOME_COMPLETED
    assert await gw.gateway.store.get("sandbox", created.metadata.id) is None


async def test_replayed_old_snapshot_does_not_regress(gw: Running) -> None:
    gw.driver.auto_ready = False
    created = (await gw.stub.CreateSandbox(create_request("alpha"))).sandbox
    gw.driver.emit(SnapshotEvent(ready(created.metadata.id, 10)))
    await eventually(lambda: phase_of(gw, "alpha"), lambda p: p == P.SANDBOX_PHASE_READY)
    version = (await get(gw, "alpha")).metadata.resource_version
    from shellgate.reconcilers.snapshot import DriverCondition, DriverSnapshot

    old = DriverSnapshot(
        created.metadata.id, 5, (DriverCondition("Ready", "False", "DependenciesNotReady"),)
    )
    gw.driver.emit(SnapshotEvent(old))
    gw.driver.emit(SnapshotEvent(ready(created.metadata.id, 10)))  # a duplicate: no write
    marker = (await gw.stub.CreateSandbox(create_request("marker"))).sandbox
    gw.driver.emit(SnapshotEvent(ready(marker.metadata.id, 11)))
    await eventually(lambda: phase_of(gw, "marker"), lambda p: p == P.SANDBOX_PHASE_READY)
    after = await get(gw, "alpha")
    assert after.status.phase == P.SANDBOX_PHASE_READY
    assert after.metadata.resource_version == version


async def test_watch_sandbox_streams_status_changes(gw: Running) -> None:
    gw.driver.auto_ready = False
    created = (await gw.stub.CreateSandbox(create_request("alpha"))).sandbox
    stream = gw.stub.WatchSandbox(
        P.WatchSandboxRequest(sandbox="alpha", follow_status=True, stop_on_terminal=True)
    )
    first = await asyncio.wait_for(stream.read(), 5)
    assert first.sandbox.status.phase == P.SANDBOX_PHASE_PROVISIONING
    gw.driver.emit(SnapshotEvent(ready(created.metadata.id, 1)))
    second = await asyncio.wait_for(stream.read(), 5)
    assert second.sandbox.status.phase == P.SANDBOX_PHASE_READY
    assert await asyncio.wait_for(stream.read(), 5) == grpc.aio.EOF


async def test_watch_missing_sandbox_is_not_found(gw: Running) -> None:
    stream = gw.stub.WatchSandbox(P.WatchSandboxRequest(sandbox="ghost", follow_status=True))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.read()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unimplemented_rpc(gw: Running) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.CreateSshSession(P.CreateSshSessionRequest(sandbox="any"))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_health(gw: Running) -> None:
    response = await gw.stub.Health(P.HealthRequest())
    assert response.status == P.SERVICE_STATUS_HEALTHY and response.version
