"""Workspace RPCs: create, get, list and delete workspaces; add, remove and list members.

Who may call each is decided before the handler runs (``auth.authorize``); what is left here
is what depends on the request's content: only a platform admin grants or removes an
``admin`` membership, and a member's ListWorkspaces shows only their own workspaces.
DeleteWorkspace's guard against a concurrent create in the workspace is the repository's
(the TERMINATING mark and the writers' re-check).
"""

from __future__ import annotations

import grpc

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.controller.auth.authorize import AccessDenied, caller_of
from shellgate.controller.auth.principal import current_principal
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import not_found
from shellgate.reconcilers.access import Caller, MemberRole, may_change_membership
from shellgate.reconcilers.errors import FailedPrecondition, InvalidArgument
from shellgate.reconcilers.validation import (
    effective_page_size,
    require_valid,
    validate_labels,
    validate_max_len,
    validate_workspace,
)
from shellgate.store import DEFAULT_WORKSPACE
from shellgate.store.repositories import WORKSPACE_TYPE

MAX_SUBJECT_BYTES = 512
ROLES = {
    openshell_pb2.WORKSPACE_ROLE_USER: MemberRole.USER,
    openshell_pb2.WORKSPACE_ROLE_ADMIN: MemberRole.ADMIN,
}


def _caller() -> Caller:
    caller = caller_of(current_principal())
    assert caller is not None, "authorize() lets no unauthenticated caller through"
    return caller


def _workspace_name(name: str) -> str:
    if not name:
        raise InvalidArgument.single("name", "name is required")
    require_valid(validate_workspace(name, "name"))
    return name


def _target(selector: datamodel_pb2.WorkspaceSelector) -> str:
    require_valid(validate_workspace(selector.workspace))
    return selector.workspace or DEFAULT_WORKSPACE


def _subject(subject: str) -> str:
    if not subject:
        raise InvalidArgument.single("principal_subject", "principal_subject is required")
    require_valid(validate_max_len(subject, "principal_subject", MAX_SUBJECT_BYTES))
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in subject):
        raise InvalidArgument.single(
            "principal_subject", "principal_subject must not contain control characters"
        )
    return subject


def _check_role_change(caller: Caller, role: MemberRole) -> None:
    decision = may_change_membership(caller, role)
    if not decision.allowed:
        raise AccessDenied(grpc.StatusCode.PERMISSION_DENIED, decision.reason)


async def create_workspace(
    gw: Gateway, request: openshell_pb2.CreateWorkspaceRequest
) -> openshell_pb2.CreateWorkspaceResponse:
    name = _workspace_name(request.name)
    require_valid(validate_labels(request.labels, "labels"))
    created = await gw.repos.workspaces.create(name, dict(request.labels))
    return openshell_pb2.CreateWorkspaceResponse(workspace=created)


async def get_workspace(
    gw: Gateway, request: openshell_pb2.GetWorkspaceRequest
) -> openshell_pb2.GetWorkspaceResponse:
    name = _workspace_name(request.name)
    found = await gw.repos.workspaces.find(name)
    if found is None:
        raise not_found(WORKSPACE_TYPE, name)
    return openshell_pb2.GetWorkspaceResponse(workspace=found)


async def list_workspaces(
    gw: Gateway, request: openshell_pb2.ListWorkspacesRequest
) -> openshell_pb2.ListWorkspacesResponse:
    caller = _caller()
    limit = effective_page_size(request.page_size)
    if caller.platform_admin:
        found, token = await gw.repos.workspaces.list_page(
            selector=request.label_selector, limit=limit, page_token=request.page_token
        )
    else:
        found, token = await gw.repos.workspaces.list_for_subject(
            caller.subject,
            selector=request.label_selector,
            limit=limit,
            page_token=request.page_token,
        )
    return openshell_pb2.ListWorkspacesResponse(workspaces=found, next_page_token=token)


async def delete_workspace(
    gw: Gateway, request: openshell_pb2.DeleteWorkspaceRequest
) -> openshell_pb2.DeleteWorkspaceResponse:
    name = _workspace_name(request.name)
    if name == DEFAULT_WORKSPACE:
        raise FailedPrecondition("the default workspace cannot be deleted", "DEFAULT_WORKSPACE")
    if await gw.repos.workspaces.delete(name):
        return openshell_pb2.DeleteWorkspaceResponse(
            outcome=openshell_pb2.DELETION_OUTCOME_COMPLETED
        )
    if request.allow_missing:
        return openshell_pb2.DeleteWorkspaceResponse(
            outcome=openshell_pb2.DELETION_OUTCOME_ALREADY_ABSENT
        )
    raise not_found(WORKSPACE_TYPE, name)


async def add_workspace_member(
    gw: Gateway, request: openshell_pb2.AddWorkspaceMemberRequest
) -> openshell_pb2.AddWorkspaceMemberResponse:
    workspace = _target(request.workspace_scope)
    subject = _subject(request.principal_subject)
    role = ROLES.get(request.role)
    if role is None:
        raise InvalidArgument.single("role", "role must be WORKSPACE_ROLE_USER or _ADMIN")
    _check_role_change(_caller(), role)
    member = await gw.repos.workspaces.add_member(workspace, subject, request.role)
    return openshell_pb2.AddWorkspaceMemberResponse(member=member)


async def remove_workspace_member(
    gw: Gateway, request: openshell_pb2.RemoveWorkspaceMemberRequest
) -> openshell_pb2.RemoveWorkspaceMemberResponse:
    workspace = _target(request.workspace_scope)
    subject = _subject(request.principal_subject)
    caller = _caller()

    def allowed(member: openshell_pb2.WorkspaceMember) -> None:
        _check_role_change(caller, ROLES.get(member.role, MemberRole.NONE))

    if await gw.repos.workspaces.remove_member(workspace, subject, allowed):
        return openshell_pb2.RemoveWorkspaceMemberResponse(
            outcome=openshell_pb2.DELETION_OUTCOME_COMPLETED
        )
    if request.allow_missing:
        return openshell_pb2.RemoveWorkspaceMemberResponse(
            outcome=openshell_pb2.DELETION_OUTCOME_ALREADY_ABSENT
        )
    raise not_found("workspace member", subject)


async def list_workspace_members(
    gw: Gateway, request: openshell_pb2.ListWorkspaceMembersRequest
) -> openshell_pb2.ListWorkspaceMembersResponse:
    workspace = _target(request.workspace_scope)
    members, token = await gw.repos.workspaces.list_members(
        workspace, limit=effective_page_size(request.page_size), page_token=request.page_token
    )
    return openshell_pb2.ListWorkspaceMembersResponse(members=members, next_page_token=token)
