"""Provider credentials and refresh RPCs: GetProviderCredentials, GetSandboxProviderStatus,
ConfigureProviderRefresh, GetProviderRefreshStatus, RotateProviderCredential,
DeleteProviderRefresh.

GetProviderCredentials is the one RPC that answers credential values. Every read is logged
with the caller's identity and the keys read, never a value; who may call it is the
authorization table's decision (operator callers only in the reference).

Refresh configuration and rotation requests are rows of the refresh repository, written
with named conditions; their material is sealed at rest. shellgate records refresh
configuration and rotations but runs no refresh strategy itself (see
``reconcilers.refresh``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable

from shellgate.api import datamodel_pb2, internal_pb2, openshell_pb2
from shellgate.controller.auth.principal import current_principal
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import not_found
from shellgate.controller.service.requests import find_named, find_sandbox, single_workspace
from shellgate.reconcilers.errors import FailedPrecondition
from shellgate.reconcilers.refresh import (
    MAX_REQUEST_ID_LEN,
    ConfigureChange,
    RotationChange,
    mark_applied,
    new_config,
    refresh_row_id,
    remaining_lifetime_problem,
    require_credential_keys,
    rotation_row_id,
    utc,
    validate_configure,
    validate_credential_key,
)
from shellgate.reconcilers.validation import require_valid, validate_max_len
from shellgate.store.repositories import REFRESH_TYPE

log = logging.getLogger(__name__)
P = openshell_pb2
Provider = datamodel_pb2.Provider


async def _provider(gw: Gateway, name: str, selector: datamodel_pb2.WorkspaceSelector) -> Provider:
    return await find_named(gw, Provider, name, single_workspace(selector), "provider")


async def _after_write_provider_is_there(
    gw: Gateway, provider: Provider, undo: Callable[[], Awaitable[object]]
) -> None:
    """DeleteProvider removes the provider's row, then its refresh and rotation rows; a
    write made here after that removal would stay behind. So after writing, read the provider
    again: if it is gone (or replaced), undo the write and answer NOT_FOUND."""
    meta = provider.metadata
    current = await gw.repos.providers.find(meta.name, meta.workspace)
    if current is None or current.metadata.id != meta.id:
        await undo()
        raise not_found("provider", meta.name)


def _public(config: internal_pb2.ProviderRefreshConfig) -> P.ProviderCredentialRefreshStatus:
    return config.status


# --- GetProviderCredentials -------------------------------------------------------------------


async def get_provider_credentials(
    gw: Gateway, request: P.GetProviderCredentialsRequest
) -> P.GetProviderCredentialsResponse:
    keys = list(request.credential_keys)
    require_credential_keys(keys)
    provider = await find_named(
        gw, Provider, request.name, single_workspace(request.workspace_scope)
    )
    caller = current_principal()
    log.info(
        "provider credentials read: provider=%s workspace=%s keys=%s caller=%s (%s)",
        provider.metadata.name,
        provider.metadata.workspace,
        ",".join(keys),
        caller.subject or "unauthenticated",
        caller.provider or "none",
    )
    missing = [k for k in keys if k not in provider.credentials]
    if missing:
        raise FailedPrecondition(
            f"provider {provider.metadata.name!r} has no credential {missing[0]!r}",
            "CREDENTIAL_MISSING",
        )
    opened = {k: provider.credentials[k] for k in keys}
    gw.sealer.open_map(opened, provider.metadata.id)
    minimum = request.minimum_remaining_lifetime.ToTimedelta().total_seconds()
    now = utc(gw.clock_ms())
    response = P.GetProviderCredentialsResponse()
    for key in keys:
        config = await gw.repos.refresh.get(refresh_row_id(provider.metadata.id, key))
        expires = (
            config.status.expiration_time
            if config and config.status.HasField("expiration_time")
            else None
        )
        problem = remaining_lifetime_problem(
            key, expires.ToDatetime(tzinfo=now.tzinfo) if expires else None, minimum, now
        )
        if problem is not None:
            raise FailedPrecondition(problem, "CREDENTIAL_EXPIRING")
        value = response.credentials[key]
        value.value = opened[key]
        if expires is not None:
            value.expiration_time.CopyFrom(expires)
    return response


# --- GetSandboxProviderStatus -----------------------------------------------------------------


async def get_sandbox_provider_status(
    gw: Gateway, request: P.GetSandboxProviderStatusRequest
) -> P.GetSandboxProviderStatusResponse:
    """What the store knows: the provider is attached and stored (PERSISTED). Whether the
    sandbox installed it is the supervisor's to report, and shellgate runs none, so the
    reason is WAITING_FOR_SUPERVISOR."""
    workspace = single_workspace(request.workspace_scope)
    sandbox = await find_sandbox(gw, request.sandbox, workspace)
    if request.provider not in sandbox.spec.providers:
        raise not_found("provider", request.provider)
    provider = await find_named(gw, Provider, request.provider, workspace, "provider")
    status = P.ProviderReadinessStatus(
        state=P.PROVIDER_READINESS_STATE_PERSISTED,
        reason=P.PROVIDER_READINESS_REASON_WAITING_FOR_SUPERVISOR,
    )
    receipt = status.receipt
    receipt.receipt_id = request.receipt_id or f"{sandbox.metadata.id}/{provider.metadata.id}"
    receipt.provider = provider.metadata.name
    receipt.workspace = workspace
    receipt.persisted_time.CopyFrom(provider.metadata.created_time)
    status.evaluated_time.FromMilliseconds(gw.clock_ms())
    return P.GetSandboxProviderStatusResponse(status=status)


# --- refresh configuration --------------------------------------------------------------------


async def configure_provider_refresh(
    gw: Gateway, request: P.ConfigureProviderRefreshRequest
) -> P.ConfigureProviderRefreshResponse:
    validate_configure(request)
    provider = await _provider(gw, request.provider, request.workspace_scope)
    now = gw.clock_ms()
    candidate = new_config(request, provider, now)
    written = await gw.repos.refresh.configure(candidate, ConfigureChange(request, now))
    await _after_write_provider_is_there(
        gw, provider, lambda: gw.repos.refresh.delete(written.metadata.id)
    )
    return P.ConfigureProviderRefreshResponse(status=_public(written))


async def get_provider_refresh_status(
    gw: Gateway, request: P.GetProviderRefreshStatusRequest
) -> P.GetProviderRefreshStatusResponse:
    provider = await _provider(gw, request.provider, request.workspace_scope)
    configs = await gw.repos.refresh.of_provider(provider.metadata.id)
    if request.credential_key:
        configs = [c for c in configs if c.status.credential_key == request.credential_key]
    configs.sort(key=lambda c: c.status.credential_key)
    return P.GetProviderRefreshStatusResponse(credentials=[_public(c) for c in configs])


async def delete_provider_refresh(
    gw: Gateway, request: P.DeleteProviderRefreshRequest
) -> P.DeleteProviderRefreshResponse:
    require_valid(validate_credential_key(request.credential_key))
    provider = await _provider(gw, request.provider, request.workspace_scope)
    if await gw.repos.refresh.delete(refresh_row_id(provider.metadata.id, request.credential_key)):
        return P.DeleteProviderRefreshResponse(outcome=P.DELETION_OUTCOME_COMPLETED)
    if request.allow_missing:
        return P.DeleteProviderRefreshResponse(outcome=P.DELETION_OUTCOME_ALREADY_ABSENT)
    raise not_found(REFRESH_TYPE, f"{request.provider}/{request.credential_key}")


# --- rotation ---------------------------------------------------------------------------------


async def rotate_provider_credential(
    gw: Gateway, request: P.RotateProviderCredentialRequest
) -> P.RotateProviderCredentialResponse:
    """Idempotent by ``request_id``: its first arrival records one rotation, a repeat (on any
    replica, at any time while the id is among the row's latest) records none."""
    require_valid(
        validate_credential_key(request.credential_key)
        + validate_max_len(request.request_id, "request_id", MAX_REQUEST_ID_LEN)
    )
    provider = await _provider(gw, request.provider, request.workspace_scope)
    refresh_id = refresh_row_id(provider.metadata.id, request.credential_key)
    if await gw.repos.refresh.get(refresh_id) is None:
        raise FailedPrecondition(
            f"refresh is not configured for provider {request.provider!r} credential "
            f"{request.credential_key!r}",
            "REFRESH_NOT_CONFIGURED",
        )
    request_id = request.request_id or str(uuid.uuid4())
    row = internal_pb2.ProviderRotationRequest(
        provider_id=provider.metadata.id,
        credential_key=request.credential_key,
        request_id=request_id,
    )
    row.metadata.id = rotation_row_id(provider.metadata.id, request.credential_key, request_id)
    row.metadata.workspace = provider.metadata.workspace
    recorded = await gw.repos.refresh.request_rotation(row)
    await _after_write_provider_is_there(
        gw, provider, lambda: gw.repos.refresh.delete_rotation(recorded.metadata.id)
    )
    written = await gw.repos.refresh.rotate(
        refresh_id, recorded, RotationChange(request_id, gw.clock_ms()), mark_applied
    )
    return P.RotateProviderCredentialResponse(status=_public(written))
