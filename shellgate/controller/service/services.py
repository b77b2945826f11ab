"""Service endpoint RPCs: ExposeService, GetService, ListServices, DeleteService.

Endpoints are stored records scoped to their sandbox (the service repository): ExposeService
is create-or-update with a named condition on each write (``MUST_CREATE``, or CAS at the
version read), and a sandbox's removal removes its endpoints through the one cascade. After
writing, ExposeService reads the sandbox again and takes its row back out if the sandbox went
away meanwhile, so no endpoint outlives its sandbox. shellgate does not route traffic to
services (it has no ingress), so ``url`` is empty, as the reference answers when routing is
not configured.
"""

from __future__ import annotations

import uuid

from shellgate.api import openshell_pb2
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import not_found
from shellgate.controller.service.requests import (
    find_live_sandbox,
    one_listed_workspace,
    single_workspace,
)
from shellgate.reconcilers.errors import FailedPrecondition
from shellgate.reconcilers.services import (
    ExposeChange,
    endpoint_key,
    new_endpoint,
    validate_expose,
    validate_target,
)
from shellgate.reconcilers.validation import effective_page_size, require_valid
from shellgate.store.repositories import SERVICE_TYPE, ServiceEndpoint

P = openshell_pb2


def _response(endpoint: ServiceEndpoint) -> P.ServiceEndpointResponse:
    return P.ServiceEndpointResponse(endpoint=endpoint, url="")


async def expose_service(gw: Gateway, request: P.ExposeServiceRequest) -> P.ServiceEndpointResponse:
    require_valid(validate_expose(request))
    workspace = single_workspace(request.workspace_scope)
    sandbox = await find_live_sandbox(gw, request.sandbox, workspace)
    sandbox_id = sandbox.metadata.id
    candidate = new_endpoint(
        request, new_id=str(uuid.uuid4()), sandbox_id=sandbox_id, workspace=workspace
    )
    written, _created = await gw.repos.services.expose(candidate, ExposeChange(request))

    async def still_live() -> None:
        current = await find_live_sandbox(gw, request.sandbox, workspace)
        if current.metadata.id != sandbox_id:
            raise FailedPrecondition(f"sandbox {request.sandbox!r} was replaced meanwhile")

    await gw.repos.services.check_owner(written, still_live)
    return _response(written)


async def get_service(gw: Gateway, request: P.GetServiceRequest) -> P.ServiceEndpointResponse:
    require_valid(validate_target(request.sandbox, request.name))
    key = endpoint_key(request.sandbox, request.name)
    found = await gw.repos.services.find(key, single_workspace(request.workspace_scope))
    if found is None:
        raise not_found(SERVICE_TYPE, key)
    return _response(found)


async def list_services(gw: Gateway, request: P.ListServicesRequest) -> P.ListServicesResponse:
    """The workspace's endpoints, or one sandbox's when ``sandbox`` is named."""
    workspace = one_listed_workspace(request.workspace_scope, "ListServices")
    sandbox_id = None
    if request.sandbox:
        require_valid(validate_target(request.sandbox, ""))
        found = await gw.repos.sandboxes.find(request.sandbox, workspace)
        if found is None:
            raise not_found("sandbox", request.sandbox)
        sandbox_id = found.metadata.id
    endpoints, token = await gw.repos.services.list_page(
        workspace=workspace,
        sandbox_id=sandbox_id,
        limit=effective_page_size(request.page_size),
        page_token=request.page_token,
    )
    return P.ListServicesResponse(services=[_response(e) for e in endpoints], next_page_token=token)


async def delete_service(gw: Gateway, request: P.DeleteServiceRequest) -> P.DeleteServiceResponse:
    require_valid(validate_target(request.sandbox, request.name))
    key = endpoint_key(request.sandbox, request.name)
    if await gw.repos.services.delete(key, single_workspace(request.workspace_scope)):
        return P.DeleteServiceResponse(outcome=P.DELETION_OUTCOME_COMPLETED)
    if request.allow_missing:
        return P.DeleteServiceResponse(outcome=P.DELETION_OUTCOME_ALREADY_ABSENT)
    raise not_found(SERVICE_TYPE, key)
