"""Provider RPCs. Responses never carry credential values.

DeleteProvider's guard against a concurrent attach (no sandbox may be left naming a deleted
provider) is the provider
repository's ``delete_unreferenced``: read the provider's version, scan the sandboxes for a
reference, ``delete_if`` at the version read before the scan (docs/api.md explains why that
order closes the race).
"""

from __future__ import annotations

import contextlib
import uuid

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import not_found
from shellgate.controller.service.requests import (
    admit_into_workspace,
    confirm_in_workspace,
    delete_target,
    find_named,
    find_sandbox,
    generated_name,
    page_query,
    single_workspace,
)
from shellgate.reconcilers.profiles import profile_type
from shellgate.reconcilers.provider import (
    merge_provider_update,
    new_provider_for_create,
    redact_credentials,
)
from shellgate.reconcilers.validation import effective_page_size
from shellgate.store import StoreError
from shellgate.store.paging import decode_offset_token, encode_offset_token
from shellgate.store.repositories import PROVIDER_TYPE
from shellgate.store.repositories.rows import delete_row

Provider = datamodel_pb2.Provider


def response(provider: Provider) -> openshell_pb2.ProviderResponse:
    return openshell_pb2.ProviderResponse(provider=redact_credentials(provider))


async def find_provider(gw: Gateway, name: str, workspace: str) -> Provider:
    return await find_named(gw, Provider, name, workspace)


async def get_provider(
    gw: Gateway, request: openshell_pb2.GetProviderRequest
) -> openshell_pb2.ProviderResponse:
    found = await find_provider(gw, request.name, single_workspace(request.workspace_scope))
    return response(found)


async def create_provider(
    gw: Gateway, request: openshell_pb2.CreateProviderRequest
) -> openshell_pb2.ProviderResponse:
    incoming = Provider()
    incoming.CopyFrom(request.provider)
    incoming.metadata.workspace = single_workspace(request.workspace_scope)
    candidate = new_provider_for_create(
        incoming, new_id=str(uuid.uuid4()), random_name=generated_name("provider")
    )
    workspace = candidate.metadata.workspace
    await admit_into_workspace(gw, workspace)
    profile = profile_type(candidate.type)
    custom = await gw.repos.profiles.is_custom(profile, workspace)
    created = await gw.repos.providers.create(candidate)
    try:
        await confirm_in_workspace(gw, workspace)  # the workspace fence, after the write
    except BaseException:
        await remove_provider_row(gw, created.metadata.id)
        raise
    if custom:
        await _fence_profile(gw, created, profile)
    return response(created)


async def remove_provider_row(gw: Gateway, provider_id: str) -> None:
    """Undo a create refused by the workspace fence (the row, at whatever version it has)."""
    record = await gw.store.get(PROVIDER_TYPE, provider_id)
    if record is not None:
        await delete_row(gw.store, record)


async def _fence_profile(gw: Gateway, created: Provider, profile: str) -> None:
    """A provider of a custom profile's type fences the profile after its insert (see the
    profile repository); if the profile is gone, the provider is taken back out."""
    try:
        await gw.repos.profiles.fence(profile, created.metadata.workspace)
    except BaseException:
        meta = created.metadata
        with contextlib.suppress(StoreError):
            await gw.store.delete_if(PROVIDER_TYPE, meta.id, meta.resource_version)
        raise


async def list_providers(
    gw: Gateway, request: openshell_pb2.ListProvidersRequest
) -> openshell_pb2.ListProvidersResponse:
    providers, token = await gw.repos.providers.list_page(**page_query(request))
    return openshell_pb2.ListProvidersResponse(
        providers=[redact_credentials(p) for p in providers], next_page_token=token
    )


async def update_provider(
    gw: Gateway, request: openshell_pb2.UpdateProviderRequest
) -> openshell_pb2.ProviderResponse:
    """Merge into a candidate, validate it, then CAS-write; the client's version if it sent one."""
    incoming = request.provider
    existing = await find_provider(
        gw, incoming.metadata.name, single_workspace(request.workspace_scope)
    )
    outcome = await gw.repos.providers.update(
        existing.metadata.id,
        lambda stored: merge_provider_update(stored, incoming),
        incoming.metadata.resource_version,
    )
    return response(outcome.message)


async def delete_provider(
    gw: Gateway, request: openshell_pb2.DeleteProviderRequest
) -> openshell_pb2.DeleteProviderResponse:
    """Refused (FAILED_PRECONDITION, naming the sandboxes) while any sandbox references it."""
    name, workspace = delete_target(request)
    found = await gw.repos.providers.find(name, workspace)
    if await gw.repos.providers.delete_unreferenced(name, workspace):
        if found is not None:  # its refresh configuration and rotation requests go with it
            await gw.repos.refresh.remove_owned(found.metadata.id)
        return openshell_pb2.DeleteProviderResponse(
            outcome=openshell_pb2.DELETION_OUTCOME_COMPLETED
        )
    if request.allow_missing:
        return openshell_pb2.DeleteProviderResponse(
            outcome=openshell_pb2.DELETION_OUTCOME_ALREADY_ABSENT
        )
    raise not_found(PROVIDER_TYPE, name)


async def list_sandbox_providers(
    gw: Gateway, request: openshell_pb2.ListSandboxProvidersRequest
) -> openshell_pb2.ListSandboxProvidersResponse:
    workspace = single_workspace(request.workspace_scope)
    sandbox = await find_sandbox(gw, request.sandbox, workspace)
    names = list(dict.fromkeys(sandbox.spec.providers))
    start = decode_offset_token(request.page_token)
    size = effective_page_size(request.page_size)
    providers = []
    for name in names[start : start + size]:
        found = await gw.repos.providers.find(name, workspace)
        if found is not None:
            providers.append(redact_credentials(found))
    token = encode_offset_token(start + size) if start + size < len(names) else ""
    return openshell_pb2.ListSandboxProvidersResponse(providers=providers, next_page_token=token)
