"""Provider credentials and refresh through a real gRPC socket, on SQLite and Postgres:
GetProviderCredentials (values, their expiry, the read logged with the caller and never the
value), GetSandboxProviderStatus, refresh configuration (material sealed at rest), and
rotations idempotent by request id (forced concurrent arrivals; a companion removes the
request-id check)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from shellgate.api import datamodel_pb2, internal_pb2, openshell_pb2
from shellgate.controller.service import credentials
from shellgate.reconcilers import refresh as refresh_rules
from shellgate.store import decode
from shellgate.store.repositories import REFRESH_TYPE, ROTATION_TYPE
from tests.config.helpers import create_sandbox, failure
from tests.support.gateway import Running
from tests.support.hooks import Gate

P = openshell_pb2
OAUTH = P.PROVIDER_CREDENTIAL_REFRESH_STRATEGY_OAUTH2_REFRESH_TOKEN
SECRET = "s3cr3t-value-never-logged"
MATERIAL = "refresh-token-at-rest"


async def make_provider(gw: Running, name: str = "gh") -> None:
    message = datamodel_pb2.Provider(type="github", credentials={"GITHUB_TOKEN": SECRET, "B": "b"})
    message.metadata.name = name
    await gw.stub.CreateProvider(P.CreateProviderRequest(provider=message))


def configure(**kw: Any) -> P.ConfigureProviderRefreshRequest:
    request = P.ConfigureProviderRefreshRequest(
        provider="gh",
        credential_key="GITHUB_TOKEN",
        strategy=OAUTH,
        material={"refresh_token": MATERIAL, "client_id": "cid"},
        secret_material_keys=["refresh_token"],
    )
    for key, value in kw.items():
        field = getattr(request, key)
        if isinstance(value, list):
            del field[:]
            field.extend(value)
        elif isinstance(value, dict):
            field.clear()
            field.update(value)
        elif hasattr(field, "CopyFrom"):
            field.CopyFrom(value)
        else:
            setattr(request, key, value)
    return request


def rotate(request_id: str) -> P.RotateProviderCredentialRequest:
    return P.RotateProviderCredentialRequest(
        provider="gh", credential_key="GITHUB_TOKEN", request_id=request_id
    )


async def refresh_row(gw: Running) -> internal_pb2.ProviderRefreshConfig:
    page = await gw.gateway.store.list(REFRESH_TYPE, workspace=None, limit=10)
    (record,) = page.records
    return decode(internal_pb2.ProviderRefreshConfig, record)


async def test_get_credentials_answers_values_and_logs_the_caller_not_the_value(
    gw: Running, caplog: pytest.LogCaptureFixture
) -> None:
    await make_provider(gw)
    request = P.GetProviderCredentialsRequest(name="gh", credential_keys=["GITHUB_TOKEN"])
    with caplog.at_level(logging.INFO):
        response = await gw.stub.GetProviderCredentials(request)
    assert response.credentials["GITHUB_TOKEN"].value == SECRET
    assert list(response.credentials) == ["GITHUB_TOKEN"]
    reads = [r.getMessage() for r in caplog.records if "credentials read" in r.getMessage()]
    assert reads == [
        "provider credentials read: provider=gh workspace=default keys=GITHUB_TOKEN "
        "caller=anonymous (none)"
    ]
    assert all(SECRET not in r.getMessage() for r in caplog.records)
    listed = await gw.stub.ListProviders(P.ListProvidersRequest())
    assert listed.providers[0].credentials["GITHUB_TOKEN"] == "REDACTED"


@pytest.mark.parametrize(
    ("keys", "code", "message"),
    [
        (
            [],
            grpc.StatusCode.INVALID_ARGUMENT,
            "select between 1 and 32 unique runtime environment keys",
        ),
        (
            ["A", "A"],
            grpc.StatusCode.INVALID_ARGUMENT,
            "select between 1 and 32 unique runtime environment keys",
        ),
        (["NOPE"], grpc.StatusCode.FAILED_PRECONDITION, "provider 'gh' has no credential 'NOPE'"),
    ],
)
async def test_get_credentials_refusals(
    gw: Running, keys: list[str], code: grpc.StatusCode, message: str
) -> None:
    await make_provider(gw)
    request = P.GetProviderCredentialsRequest(name="gh", credential_keys=keys)
    error = await failure(gw.stub.GetProviderCredentials(request))
    assert (error.code(), error.details()) == (code, message)


async def test_expiry_from_the_refresh_row_and_the_minimum_lifetime(gw: Running) -> None:
    await make_provider(gw)
    expires = timestamp_pb2.Timestamp()
    expires.FromMilliseconds(gw.gateway.clock_ms() + 600_000)
    await gw.stub.ConfigureProviderRefresh(configure(expiration_time=expires))
    request = P.GetProviderCredentialsRequest(name="gh", credential_keys=["GITHUB_TOKEN"])
    answer = await gw.stub.GetProviderCredentials(request)
    assert answer.credentials["GITHUB_TOKEN"].expiration_time == expires
    request.minimum_remaining_lifetime.FromTimedelta(timedelta(hours=1))
    error = await failure(gw.stub.GetProviderCredentials(request))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "less than the minimum requested" in error.details()


async def test_sandbox_provider_status(gw: Running) -> None:
    await make_provider(gw)
    spec = P.SandboxSpec(providers=["gh"])
    await gw.stub.CreateSandbox(P.CreateSandboxRequest(name="alpha", spec=spec))
    await create_sandbox(gw, "beta")
    status = (
        await gw.stub.GetSandboxProviderStatus(
            P.GetSandboxProviderStatusRequest(sandbox="alpha", provider="gh")
        )
    ).status
    assert status.state == P.PROVIDER_READINESS_STATE_PERSISTED
    assert status.reason == P.PROVIDER_READINESS_REASON_WAITING_FOR_SUPERVISOR
    assert (status.receipt.provider, status.receipt.workspace) == ("gh", "default")
    error = await failure(
        gw.stub.GetSandboxProviderStatus(
            P.GetSandboxProviderStatusRequest(sandbox="beta", provider="gh")
        )
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND


async def test_configure_status_delete_and_material_sealed_at_rest(gw: Running) -> None:
    await make_provider(gw)
    first = (await gw.stub.ConfigureProviderRefresh(configure())).status
    assert (first.provider, first.credential_key, first.strategy, first.status) == (
        "gh",
        "GITHUB_TOKEN",
        OAUTH,
        "configured",
    )
    page = await gw.gateway.store.list(REFRESH_TYPE, workspace=None, limit=10)
    (record,) = page.records
    assert MATERIAL.encode() not in record.payload and b"cid" not in record.payload
    stored = await refresh_row(gw)
    opened = dict(stored.material)
    gw.gateway.sealer.open_map(opened, stored.metadata.id)
    assert opened == {"refresh_token": MATERIAL, "client_id": "cid"}
    again = configure(material={"refresh_token": "other"}, secret_material_keys=["refresh_token"])
    await gw.stub.ConfigureProviderRefresh(again)
    assert (await refresh_row(gw)).metadata.resource_version == 2
    statuses = await gw.stub.GetProviderRefreshStatus(
        P.GetProviderRefreshStatusRequest(provider="gh")
    )
    assert [s.credential_key for s in statuses.credentials] == ["GITHUB_TOKEN"]
    deleted = await gw.stub.DeleteProviderRefresh(
        P.DeleteProviderRefreshRequest(provider="gh", credential_key="GITHUB_TOKEN")
    )
    assert deleted.outcome == P.DELETION_OUTCOME_COMPLETED
    absent = await gw.stub.DeleteProviderRefresh(
        P.DeleteProviderRefreshRequest(
            provider="gh", credential_key="GITHUB_TOKEN", allow_missing=True
        )
    )
    assert absent.outcome == P.DELETION_OUTCOME_ALREADY_ABSENT


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (configure(strategy=0), "strategy is required"),
        (configure(credential_key=""), "credential_key is required"),
        (
            configure(secret_material_keys=["nope"]),
            "secret_material_keys names 'nope', not in material",
        ),
    ],
)
async def test_bad_configurations_store_nothing(
    gw: Running, request_: P.ConfigureProviderRefreshRequest, field: str
) -> None:
    await make_provider(gw)
    error = await failure(gw.stub.ConfigureProviderRefresh(request_))
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, field)
    page = await gw.gateway.store.list(REFRESH_TYPE, workspace=None, limit=10)
    assert list(page.records) == []


async def test_rotation_needs_a_configuration_and_is_idempotent_by_request_id(gw: Running) -> None:
    await make_provider(gw)
    error = await failure(gw.stub.RotateProviderCredential(rotate("r1")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    await gw.stub.ConfigureProviderRefresh(configure())
    first = (await gw.stub.RotateProviderCredential(rotate("r1"))).status
    assert first.status == "rotation_requested"
    await gw.stub.RotateProviderCredential(rotate("r1"))
    await gw.stub.RotateProviderCredential(rotate("r2"))
    row = await refresh_row(gw)
    assert row.rotations == 2 and list(row.applied_request_ids) == ["r1", "r2"]
    requests = await gw.gateway.repos.refresh.rotations_of(row.status.provider_id)
    assert sorted(r.request_id for r in requests) == ["r1", "r2"]
    assert all(r.applied for r in requests)


async def concurrent_same_request(gw: Running) -> int:
    """Two RotateProviderCredential calls with one request id: the first holds just before
    its rotation while the second runs to completion, then the first goes on."""
    await make_provider(gw)
    await gw.stub.ConfigureProviderRefresh(configure())
    gate = Gate()
    gw.gateway.repos.refresh.hooks.before_rotation = gate
    first = await gate.hold(gw.stub.RotateProviderCredential(rotate("same")))
    await gw.stub.RotateProviderCredential(rotate("same"))
    gate.release()
    await first
    return (await refresh_row(gw)).rotations


async def test_one_request_id_arriving_twice_at_once_rotates_once(gw: Running) -> None:
    assert await concurrent_same_request(gw) == 1


async def test_without_the_request_id_check_it_rotates_twice(
    gw: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = refresh_rules.RotationChange.__call__

    def count_always(self: refresh_rules.RotationChange, config: Any) -> Any:
        del config.applied_request_ids[:]  # the history the check consults, forgotten
        return original(self, config)

    monkeypatch.setattr(refresh_rules.RotationChange, "__call__", count_always)
    assert await concurrent_same_request(gw) == 2


async def test_many_arrivals_of_one_request_id_rotate_once(gw: Running) -> None:
    await make_provider(gw)
    await gw.stub.ConfigureProviderRefresh(configure())
    await asyncio.gather(*(gw.stub.RotateProviderCredential(rotate("burst")) for _ in range(8)))
    assert (await refresh_row(gw)).rotations == 1


async def test_deleting_the_provider_removes_its_refresh_and_rotation_rows(gw: Running) -> None:
    await make_provider(gw)
    await gw.stub.ConfigureProviderRefresh(configure())
    await gw.stub.RotateProviderCredential(rotate("r1"))
    await gw.stub.DeleteProvider(P.DeleteProviderRequest(name="gh"))
    for kind in (REFRESH_TYPE, ROTATION_TYPE):
        page = await gw.gateway.store.list(kind, workspace=None, limit=10)
        assert list(page.records) == [], kind


async def provider_removed_inside_configure(gw: Running) -> tuple[Any, list[Any]]:
    """ConfigureProviderRefresh found the provider and waits before its write; DeleteProvider
    runs to completion (its cascade finds nothing yet)."""
    await make_provider(gw)
    gate = Gate()
    gw.gateway.repos.refresh.hooks.before_configure_write = gate
    configuring = await gate.hold(gw.stub.ConfigureProviderRefresh(configure()))
    await gw.stub.DeleteProvider(P.DeleteProviderRequest(name="gh"))
    gate.release()
    try:
        answer: Any = await configuring
    except grpc.aio.AioRpcError as error:
        answer = error
    page = await gw.gateway.store.list(REFRESH_TYPE, workspace=None, limit=10)
    return answer, list(page.records)


def check_no_orphan(answer: Any, left: list[Any]) -> None:
    assert left == [], "a refresh row outlived its provider"
    assert isinstance(answer, grpc.aio.AioRpcError) and answer.code() == grpc.StatusCode.NOT_FOUND


async def test_configure_racing_the_provider_delete_leaves_no_orphan(gw: Running) -> None:
    check_no_orphan(*await provider_removed_inside_configure(gw))


async def test_without_the_recheck_the_refresh_row_is_orphaned(
    gw: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_check(*_args: object) -> None:
        return None

    monkeypatch.setattr(credentials, "_after_write_provider_is_there", no_check)
    with pytest.raises(AssertionError, match="outlived"):
        check_no_orphan(*await provider_removed_inside_configure(gw))


async def test_the_same_configuration_again_writes_nothing(gw: Running) -> None:
    await make_provider(gw)
    await gw.stub.ConfigureProviderRefresh(configure())
    await gw.stub.ConfigureProviderRefresh(configure())
    assert (await refresh_row(gw)).metadata.resource_version == 1


async def test_an_overlong_request_id_is_refused(gw: Running) -> None:
    await make_provider(gw)
    await gw.stub.ConfigureProviderRefresh(configure())
    error = await failure(gw.stub.RotateProviderCredential(rotate("x" * 129)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await refresh_row(gw)).rotations == 0
