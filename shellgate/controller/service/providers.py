"""Provider RPCs, and the provider side of the delete-versus-attach guard.

DeleteProvider protocol (architecture decision 11): read the provider's version, scan every
sandbox of its workspace for a reference, and ``delete_if`` on the version read *before* the
scan. An attach fences the provider (bumps its version) after its sandbox write, so an attach
that slipped in after our read makes ``delete_if`` fail with Conflict; we then read and scan
again, find the reference and refuse. Responses never carry credential values.
"""

from __future__ import annotations

import uuid

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import not_found
from shellgate.controller.service.requests import find_named, single_workspace, workspace_of
from shellgate.controller.service.sandboxes import find_sandbox, generated_name
from shellgate.reconcilers.errors import FailedPrecondition, InvalidArgument
from shellgate.reconcilers.provider import (
    merge_provider_update,
    new_provider_for_create,
    redact_credentials,
)
from shellgate.reconcilers.validation import effective_page_size
from shellgate.store import Conflict, ObjectRecord
from shellgate.store.paging import decode_offset_token, encode_offset_token

Provider = datamodel_pb2.Provider
DELETE_ATTEMPTS = 5
SCAN_PAGE = 1000


def response(provider: Provider) -> openshell_pb2.ProviderResponse:
    return openshell_pb2.ProviderResponse(provider=redact_credentials(provider))


async def find_provider(gw: Gateway, name: str, workspace: str) -> Provider:
    return await find_named(gw, Provider, name, workspace)


async def create_provider(gw: Gateway, request: openshell_pb2.CreateProviderRequest) -> Provider:
    incoming = Provider()
    incoming.CopyFrom(request.provider)
    incoming.metadata.workspace = single_workspace(request.workspace_scope)
    candidate = new_provider_for_create(
        incoming, new_id=str(uuid.uuid4()), random_name=generated_name("provider")
    )
    return await gw.store.create_message(candidate)


async def list_providers(
    gw: Gateway, request: openshell_pb2.ListProvidersRequest
) -> openshell_pb2.ListProvidersResponse:
    providers, token = await gw.store.list_messages(
        Provider,
        workspace=workspace_of(request.workspace_scope),
        selector=request.label_selector,
        limit=effective_page_size(request.page_size),
        page_token=request.page_token,
    )
    return openshell_pb2.ListProvidersResponse(
        providers=[redact_credentials(p) for p in providers], next_page_token=token
    )


async def update_provider(gw: Gateway, request: openshell_pb2.UpdateProviderRequest) -> Provider:
    """Merge into a candidate, validate it, then CAS-write; the client's version if it sent one."""
    incoming = request.provider
    existing = await find_provider(
        gw, incoming.metadata.name, single_workspace(request.workspace_scope)
    )
    outcome = await gw.store.update_message_cas(
        Provider,
        existing.metadata.id,
        lambda stored: merge_provider_update(stored, incoming),
        incoming.metadata.resource_version,
    )
    return outcome.message


async def delete_provider(
    gw: Gateway, request: openshell_pb2.DeleteProviderRequest
) -> openshell_pb2.DeleteProviderResponse:
    workspace = single_workspace(request.workspace_scope)
    if not request.name:
        raise InvalidArgument.single("name", "name is required")
    for _ in range(DELETE_ATTEMPTS):
        record = await gw.store.get_by_name("provider", request.name, workspace)
        if record is None:
            if request.allow_missing:
                return openshell_pb2.DeleteProviderResponse(
                    outcome=openshell_pb2.DELETION_OUTCOME_ALREADY_ABSENT
                )
            raise not_found("provider", request.name)
        await refuse_if_referenced(gw, record)
        try:
            if await gw.store.delete_if("provider", record.id, record.resource_version):
                return openshell_pb2.DeleteProviderResponse(
                    outcome=openshell_pb2.DELETION_OUTCOME_COMPLETED
                )
        except Conflict:
            continue  # something (perhaps an attach) touched it since our read: check again
    raise Conflict(None)


async def refuse_if_referenced(gw: Gateway, provider: ObjectRecord) -> None:
    users = await sandboxes_referencing(gw, provider.name or "", provider.workspace)
    if users:
        shown = ", ".join(sorted(users)[:10])
        raise FailedPrecondition(
            f"provider {provider.name!r} is attached to sandboxes: {shown}", "PROVIDER_IN_USE"
        )


async def sandboxes_referencing(gw: Gateway, name: str, workspace: str) -> list[str]:
    users: list[str] = []
    token = ""
    while True:
        page, token = await gw.store.list_messages(
            openshell_pb2.Sandbox, workspace=workspace, limit=SCAN_PAGE, page_token=token
        )
        users += [s.metadata.name for s in page if name in s.spec.providers]
        if not token:
            return users


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
        found = await gw.store.get_message_by_name(Provider, name, workspace)
        if found is not None:
            providers.append(redact_credentials(found))
    token = encode_offset_token(start + size) if start + size < len(names) else ""
    return openshell_pb2.ListSandboxProvidersResponse(providers=providers, next_page_token=token)
