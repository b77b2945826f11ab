"""Sandbox template RPCs: CreateSandboxTemplate, GetSandboxTemplate, ListSandboxTemplates,
DeleteSandboxTemplate. BeginRootfsTarStaging stays unserved (no image staging yet).

Creates are ``MUST_CREATE`` (a taken name is ALREADY_EXISTS); templates have no update RPC.
DeleteSandboxTemplate is refused while a sandbox built from the template exists; its guard
against a concurrent create from the template is the template repository's
``delete_unreferenced`` (read the version, scan, ``delete_if`` at the version read), the
same protocol as DeleteProvider's.
"""

from __future__ import annotations

import uuid

from shellgate.api import openshell_pb2
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import not_found
from shellgate.controller.service.requests import (
    find_named,
    page_query,
    single_workspace,
)
from shellgate.reconcilers.errors import InvalidArgument
from shellgate.reconcilers.templates import template_for_create, validate_template
from shellgate.reconcilers.validation import require_valid
from shellgate.store.repositories import TEMPLATE_TYPE, SandboxWorkloadTemplate

P = openshell_pb2


async def create_sandbox_template(
    gw: Gateway, request: P.CreateSandboxTemplateRequest
) -> P.SandboxTemplateResponse:
    if not request.HasField("template"):
        raise InvalidArgument.single("template", "template is required")
    candidate = template_for_create(
        request.template,
        new_id=str(uuid.uuid4()),
        workspace=single_workspace(request.workspace_scope),
    )
    require_valid(validate_template(candidate))
    created = await gw.repos.templates.create(candidate)
    return P.SandboxTemplateResponse(template=created)


async def get_sandbox_template(
    gw: Gateway, request: P.GetSandboxTemplateRequest
) -> P.SandboxTemplateResponse:
    workspace = single_workspace(request.workspace_scope)
    found = await find_named(gw, SandboxWorkloadTemplate, request.name, workspace)
    return P.SandboxTemplateResponse(template=found)


async def list_sandbox_templates(
    gw: Gateway, request: P.ListSandboxTemplatesRequest
) -> P.ListSandboxTemplatesResponse:
    templates, token = await gw.repos.templates.list_page(**page_query(request))
    return P.ListSandboxTemplatesResponse(templates=templates, next_page_token=token)


async def delete_sandbox_template(
    gw: Gateway, request: P.DeleteSandboxTemplateRequest
) -> P.DeleteSandboxTemplateResponse:
    """Refused (FAILED_PRECONDITION, naming the sandboxes) while a sandbox built from it
    exists."""
    workspace = single_workspace(request.workspace_scope)
    if not request.name:
        raise InvalidArgument.single("name", "name is required")
    if await gw.repos.templates.delete_unreferenced(request.name, workspace):
        return P.DeleteSandboxTemplateResponse(outcome=P.DELETION_OUTCOME_COMPLETED)
    if request.allow_missing:
        return P.DeleteSandboxTemplateResponse(outcome=P.DELETION_OUTCOME_ALREADY_ABSENT)
    raise not_found(TEMPLATE_TYPE, request.name)
