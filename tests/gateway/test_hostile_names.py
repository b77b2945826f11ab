"""One rule per kind of name, on every RPC that takes it; bounded objects; process-safe
environments and commands. Each case was accepted (or answered UNAVAILABLE from the local
driver, leaking host paths) before it was refused here with INVALID_ARGUMENT."""

from __future__ import annotations

import grpc
import pytest

from shellgate.api import datamodel_pb2, openshell_pb2
from tests.gateway.conftest import Running

P = openshell_pb2
D = datamodel_pb2


async def code_of(call: object) -> grpc.StatusCode:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        assert len(error.details() or "") <= 1024
        return error.code()
    return grpc.StatusCode.OK


def in_workspace(name: str) -> D.WorkspaceSelector:
    return D.WorkspaceSelector(workspace=name)


@pytest.mark.parametrize(
    "workspace", ["w" * 1_000_000, "a\nINFO forged log line", "Upper", "-x", "a" * 64]
)
async def test_bad_workspaces_are_refused_on_every_rpc(gw: Running, workspace: str) -> None:
    scope = in_workspace(workspace)
    calls = [
        gw.stub.CreateSandbox(
            P.CreateSandboxRequest(name="a", spec=P.SandboxSpec(), workspace_scope=scope)
        ),
        gw.stub.GetSandbox(P.GetSandboxRequest(name="a", workspace_scope=scope)),
        gw.stub.ListSandboxes(P.ListSandboxesRequest(workspace_scope=scope)),
        gw.stub.ListProviders(P.ListProvidersRequest(workspace_scope=scope)),
        gw.stub.DeleteSandbox(P.DeleteSandboxRequest(name="a", workspace_scope=scope)),
    ]
    for call in calls:
        assert await code_of(call) == grpc.StatusCode.INVALID_ARGUMENT
    everything = P.ListSandboxesRequest(
        workspace_scope=D.WorkspaceSelector(all_workspaces=D.AllWorkspaces())
    )
    assert list((await gw.stub.ListSandboxes(everything)).sandboxes) == []


async def test_a_good_workspace_works(gw: Running) -> None:
    scope = in_workspace("team-a")
    await gw.stub.CreateSandbox(
        P.CreateSandboxRequest(name="a", spec=P.SandboxSpec(), workspace_scope=scope)
    )
    got = await gw.stub.GetSandbox(P.GetSandboxRequest(name="a", workspace_scope=scope))
    assert got.sandbox.metadata.workspace == "team-a"


def provider(name: str = "gh", **credentials: str) -> P.CreateProviderRequest:
    message = D.Provider(type="github", credentials=credentials or {"TOKEN": "t"})
    message.metadata.name = name
    return P.CreateProviderRequest(provider=message)


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(provider("../../etc/passwd"), id="path name"),
        pytest.param(provider("Upper"), id="uppercase name"),
        pytest.param(provider(**{"": "v"}), id="empty credential key"),
        pytest.param(provider(**{"A=B\x00": "v"}), id="credential key with = and NUL"),
        pytest.param(provider(TOKEN="a\x00b"), id="credential value with NUL"),
        pytest.param(
            provider(**{f"K{n}": "v" * 8000 for n in range(20)}), id="provider over 128 KiB"
        ),
    ],
)
async def test_bad_providers_are_refused(gw: Running, request_: P.CreateProviderRequest) -> None:
    assert await code_of(gw.stub.CreateProvider(request_)) == grpc.StatusCode.INVALID_ARGUMENT
    assert list((await gw.stub.ListProviders(P.ListProvidersRequest())).providers) == []


def sandbox(**spec: object) -> P.CreateSandboxRequest:
    return P.CreateSandboxRequest(name="s", spec=P.SandboxSpec(**spec))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "request_",
    [
        pytest.param(sandbox(environment={"A=B": "v"}), id="env key with ="),
        pytest.param(sandbox(environment={"A\x00": "v"}), id="env key with NUL"),
        pytest.param(sandbox(environment={"A": "v\x00"}), id="env value with NUL"),
        pytest.param(
            sandbox(environment={f"K{n}": "v" * 8000 for n in range(40)}), id="env over 256 KiB"
        ),
        pytest.param(sandbox(command=[""]), id="empty program"),
        pytest.param(sandbox(command=["sh", "a\x00b"]), id="NUL argument"),
        pytest.param(sandbox(command=["x"] * 1025), id="too many arguments"),
        pytest.param(sandbox(command=["x" * 70_000, "y" * 70_000]), id="command over 128 KiB"),
    ],
)
async def test_bad_processes_are_refused_before_the_driver(
    gw: Running, request_: P.CreateSandboxRequest
) -> None:
    assert await code_of(gw.stub.CreateSandbox(request_)) == grpc.StatusCode.INVALID_ARGUMENT
    assert list((await gw.stub.ListSandboxes(P.ListSandboxesRequest())).sandboxes) == []


async def test_annotations_are_bounded_in_total(gw: Running) -> None:
    request = P.CreateSandboxRequest(name="s", spec=P.SandboxSpec())
    request.annotations.update({f"k{n}": "v" * 8000 for n in range(40)})  # 320 KB in all
    assert await code_of(gw.stub.CreateSandbox(request)) == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("name", ["../../etc/passwd", "a\nb", "Upper_Case"])
async def test_lookups_apply_the_create_rule(gw: Running, name: str) -> None:
    assert (
        await code_of(gw.stub.GetSandbox(P.GetSandboxRequest(name=name)))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    watch = gw.stub.WatchSandbox(P.WatchSandboxRequest(sandbox=name))
    assert await code_of(watch.read()) == grpc.StatusCode.INVALID_ARGUMENT
