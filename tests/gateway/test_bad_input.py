"""Bad input is INVALID_ARGUMENT with a field violation, and nothing is stored."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from shellgate.api import datamodel_pb2, openshell_pb2
from tests.gateway.conftest import Running

P = openshell_pb2


def sandbox_request(**overrides: object) -> P.CreateSandboxRequest:
    request = P.CreateSandboxRequest(name="ok", spec=P.SandboxSpec())
    for key, value in overrides.items():
        if key == "labels":
            request.labels.update(value)  # type: ignore[arg-type]
        elif key == "environment":
            request.spec.environment.update(value)  # type: ignore[arg-type]
        elif key == "providers":
            request.spec.providers.extend(value)  # type: ignore[arg-type]
        else:
            setattr(request, key, value)
    return request


async def violations(call: object) -> list[str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    assert status is not None, "INVALID_ARGUMENT must carry google.rpc.Status details"
    fields = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request)
        fields += [v.field for v in bad_request.field_violations]
    assert fields
    return fields


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"name": "x" * 254}, "metadata.name"),
        ({"name": "Not_A_DNS_Name"}, "metadata.name"),
        ({"labels": {"bad key!": "v"}}, "metadata.labels"),
        ({"labels": {"k": "v" * 64}}, "metadata.labels"),
        ({"labels": {"-k": "v"}}, "metadata.labels"),
        ({"environment": {f"K{n}": "v" for n in range(129)}}, "spec.environment"),
        ({"environment": {"K": "v" * 8193}}, "spec.environment"),
        ({"providers": [f"p{n}" for n in range(33)]}, "spec.providers"),
    ],
)
async def test_bad_sandbox_create(gw: Running, overrides: dict[str, object], field: str) -> None:
    fields = await violations(gw.stub.CreateSandbox(sandbox_request(**overrides)))
    assert field in fields
    assert (await gw.stub.ListSandboxes(P.ListSandboxesRequest())).sandboxes == []
    assert gw.driver.calls == []


@pytest.mark.parametrize("selector", ["env in prod", "a=b,", "=x", "k=" + "v" * 64, "bad key=1"])
async def test_malformed_selectors(gw: Running, selector: str) -> None:
    fields = await violations(
        gw.stub.ListSandboxes(P.ListSandboxesRequest(label_selector=selector))
    )
    assert fields == ["label_selector"]


async def test_bad_page_size_and_token(gw: Running) -> None:
    assert await violations(gw.stub.ListSandboxes(P.ListSandboxesRequest(page_size=1001))) == [
        "page_size"
    ]
    assert await violations(gw.stub.ListSandboxes(P.ListSandboxesRequest(page_token="zz"))) == [
        "page_token"
    ]


@pytest.mark.parametrize(
    ("credentials", "field"),
    [
        ({}, "provider.credentials"),
        ({f"K{n}": "v" for n in range(33)}, "provider.credentials"),
        ({"K" * 257: "v"}, "provider.credentials"),
    ],
)
async def test_bad_provider_create(gw: Running, credentials: dict[str, str], field: str) -> None:
    provider = datamodel_pb2.Provider(type="github", credentials=credentials)
    provider.metadata.name = "gh"
    fields = await violations(gw.stub.CreateProvider(P.CreateProviderRequest(provider=provider)))
    assert field in fields
    assert (await gw.stub.ListProviders(P.ListProvidersRequest())).providers == []
