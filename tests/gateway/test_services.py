"""Service endpoints through a real gRPC socket, on SQLite and Postgres: create-or-update by
CAS, the routing-key rules, scoping to the sandbox, removal with it by the one cascade, and
ExposeService racing the sandbox's removal (forced; a companion removes the re-check)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.reconcilers import sandbox as sandbox_rules
from shellgate.store.repositories import SERVICE_TYPE
from tests.config.helpers import create_sandbox, failure
from tests.support.gateway import Running
from tests.support.hooks import Gate
from tests.support.wait import eventually

P = openshell_pb2
D = datamodel_pb2
STRIP = P.SERVICE_AUTHORIZATION_MODE_STRIP


def expose(
    sandbox: str = "alpha", name: str = "web", port: int = 8080, **kw: Any
) -> P.ExposeServiceRequest:
    return P.ExposeServiceRequest(sandbox=sandbox, name=name, target_port=port, **kw)


async def rows(gw: Running) -> list[Any]:
    page = await gw.gateway.store.list(SERVICE_TYPE, workspace=None, limit=1000)
    return list(page.records)


async def test_expose_creates_then_updates_by_cas(gw: Running) -> None:
    sandbox = await create_sandbox(gw, "alpha")
    first = (await gw.stub.ExposeService(expose())).endpoint
    assert first.metadata.name == "alpha--web" and first.metadata.resource_version == 1
    assert (first.sandbox_id, first.sandbox, first.name, first.target_port) == (
        sandbox.metadata.id,
        "alpha",
        "web",
        8080,
    )
    same = (await gw.stub.ExposeService(expose())).endpoint
    assert same.metadata.resource_version == 1  # nothing changed, nothing written
    moved = (await gw.stub.ExposeService(expose(port=9090, authorization_mode=STRIP))).endpoint
    assert moved.metadata.id == first.metadata.id and moved.metadata.resource_version == 2
    assert (moved.target_port, moved.authorization_mode) == (9090, STRIP)
    got = await gw.stub.GetService(P.GetServiceRequest(sandbox="alpha", name="web"))
    assert got.endpoint == moved and got.url == ""
    (record,) = await rows(gw)
    assert record.scope == sandbox.metadata.id and record.labels == {"sandbox": "alpha"}


async def test_the_unnamed_service_is_keyed_by_the_sandbox(gw: Running) -> None:
    await create_sandbox(gw, "alpha")
    unnamed = (await gw.stub.ExposeService(expose(name=""))).endpoint
    assert unnamed.metadata.name == "alpha"
    got = await gw.stub.GetService(P.GetServiceRequest(sandbox="alpha"))
    assert got.endpoint.metadata.id == unnamed.metadata.id


async def test_list_by_workspace_or_sandbox_and_delete(gw: Running) -> None:
    await create_sandbox(gw, "alpha")
    await create_sandbox(gw, "beta")
    for sandbox, name in (("alpha", "web"), ("alpha", "api"), ("beta", "web")):
        await gw.stub.ExposeService(expose(sandbox, name))
    everything = await gw.stub.ListServices(P.ListServicesRequest())
    assert sorted(s.endpoint.metadata.name for s in everything.services) == [
        "alpha--api",
        "alpha--web",
        "beta--web",
    ]
    alpha = await gw.stub.ListServices(P.ListServicesRequest(sandbox="alpha", page_size=1))
    assert len(alpha.services) == 1 and alpha.next_page_token
    rest = await gw.stub.ListServices(
        P.ListServicesRequest(sandbox="alpha", page_token=alpha.next_page_token)
    )
    names = {s.endpoint.name for s in [*alpha.services, *rest.services]}
    assert names == {"web", "api"}
    deleted = await gw.stub.DeleteService(P.DeleteServiceRequest(sandbox="alpha", name="web"))
    assert deleted.outcome == P.DELETION_OUTCOME_COMPLETED
    error = await failure(
        gw.stub.DeleteService(P.DeleteServiceRequest(sandbox="alpha", name="web"))
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    absent = await gw.stub.DeleteService(
        P.DeleteServiceRequest(sandbox="alpha", name="web", allow_missing=True)
    )
    assert absent.outcome == P.DELETION_OUTCOME_ALREADY_ABSENT


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (expose(port=0), grpc.StatusCode.INVALID_ARGUMENT, "target_port must be in 1..=65535"),
        (expose(port=70000), grpc.StatusCode.INVALID_ARGUMENT, "target_port must be in 1..=65535"),
        (expose(sandbox=""), grpc.StatusCode.INVALID_ARGUMENT, "sandbox is required"),
        (expose(name="a--b"), grpc.StatusCode.INVALID_ARGUMENT, "name must not contain '--'"),
        (
            expose(name="Web"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "name must be a lowercase DNS label",
        ),
        (
            expose(sandbox="a" * 29),
            grpc.StatusCode.INVALID_ARGUMENT,
            "sandbox must be at most 28 characters for sandbox service routing",
        ),
        (expose(sandbox="ghost"), grpc.StatusCode.NOT_FOUND, "sandbox 'ghost' not found"),
    ],
)
async def test_bad_requests_store_nothing(
    gw: Running, request_: P.ExposeServiceRequest, code: grpc.StatusCode, message: str
) -> None:
    await create_sandbox(gw, "alpha")
    error = await failure(gw.stub.ExposeService(request_))
    assert (error.code(), error.details()) == (code, message)
    assert await rows(gw) == []


async def test_deleting_the_sandbox_removes_its_endpoints_only(gw: Running) -> None:
    await create_sandbox(gw, "alpha")
    await create_sandbox(gw, "beta")
    await gw.stub.ExposeService(expose("alpha", "web"))
    await gw.stub.ExposeService(expose("beta", "web"))
    await gw.stub.DeleteSandbox(P.DeleteSandboxRequest(name="alpha"))

    async def names() -> list[str]:
        return sorted(r.name for r in await rows(gw))

    await eventually(names, lambda n: n == ["beta--web"])


async def test_a_deleting_sandbox_gets_no_new_endpoint(gw: Running) -> None:
    await create_sandbox(gw, "alpha")
    gw.driver.auto_ready = False
    found = await gw.gateway.repos.sandboxes.find("alpha", "default")
    assert found is not None
    await gw.gateway.repos.sandboxes.update(found.metadata.id, sandbox_rules.begin_delete())
    error = await failure(gw.stub.ExposeService(expose()))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await rows(gw) == []


async def removal_inside_expose(gw: Running) -> tuple[Any, list[Any]]:
    """ExposeService found the sandbox live and waits before writing its row; the sandbox is
    removed completely (the one removal path, cascade included) meanwhile."""
    sandbox = await create_sandbox(gw, "alpha")
    gate = Gate()
    gw.gateway.repos.services.hooks.before_endpoint_write = gate
    exposing = await gate.hold(gw.stub.ExposeService(expose()))
    assert await gw.gateway.remove_sandbox(sandbox.metadata.id)
    gate.release()
    try:
        answer: Any = await exposing
    except grpc.aio.AioRpcError as error:
        answer = error
    return answer, await rows(gw)


def check_no_orphan(answer: Any, left: list[Any]) -> None:
    assert left == [], f"an endpoint outlived its sandbox: {[r.name for r in left]}"
    assert isinstance(answer, grpc.aio.AioRpcError), "ExposeService answered OK"
    assert answer.code() == grpc.StatusCode.NOT_FOUND


async def test_expose_racing_the_sandbox_removal_leaves_no_orphan(gw: Running) -> None:
    check_no_orphan(*await removal_inside_expose(gw))


async def test_without_the_recheck_the_endpoint_is_orphaned(
    gw: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_check(_written: object, _live: object) -> None:
        return None

    monkeypatch.setattr(gw.gateway.repos.services, "check_owner", no_check)
    with pytest.raises(AssertionError, match="outlived"):
        check_no_orphan(*await removal_inside_expose(gw))


async def test_list_services_refuses_all_workspaces_rather_than_narrowing(gw: Running) -> None:
    """ListServices pages one workspace; asked for all of them it says so instead of
    answering `default`'s endpoints as if they were everything."""
    everywhere = D.WorkspaceSelector(all_workspaces=D.AllWorkspaces())
    for call in (
        gw.stub.ListServices(P.ListServicesRequest(workspace_scope=everywhere)),
        gw.stub.ListProviderProfiles(P.ListProviderProfilesRequest(workspace_scope=everywhere)),
    ):
        error = await failure(call)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "one workspace at a time" in (error.details() or "")
