"""Enforcement of the authorization decision, before any handler runs.

The servicer's shell calls ``authorize`` with the method's rule (read once, when the servicer
class is built, from the schema's descriptor option: a method without one cannot be served)
and the decoded request. This module gathers what the pure decision in
``reconcilers.access`` needs: the caller (the principal the authentication interceptor set),
the workspace the request targets, and, only when it decides, the caller's membership there
(one store read). It looks nothing else up: whether a sandbox or provider exists is the
handler's business and is never reached by a caller who may not see it, so a refusal reveals
nothing about what the workspace holds.

Which workspace a request targets is read from the request itself (``workspace_scope``, or
the name for the workspace RPCs), with the same rule every handler applies: empty means
"default". The handlers then look objects up by name *in that workspace*, so every
single-object RPC acts on an object of the workspace the decision was made for.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.message import Message

from shellgate.api import openshell_pb2
from shellgate.controller.auth.principal import Principal, current_principal
from shellgate.controller.gateway import Gateway
from shellgate.reconcilers.access import (
    SERVICE,
    Caller,
    MemberRole,
    MissingRule,
    Rule,
    Target,
    Verdict,
    decide,
    needs_membership,
    rule_of,
)
from shellgate.reconcilers.errors import InvalidArgument
from shellgate.reconcilers.validation import require_valid, validate_workspace
from shellgate.store import DEFAULT_WORKSPACE

WORKSPACE_BY_NAME = frozenset({"GetWorkspace", "DeleteWorkspace"})
"""Workspace RPCs whose target is the workspace their ``name`` field names."""
OWN_MEMBERSHIPS = frozenset({"ListWorkspaces"})
"""Methods that answer only what the caller belongs to (the handler filters)."""
DECIDED_ON_FIRST_MESSAGE = frozenset({"ExecSandboxInteractive"})
"""Client-streaming methods whose first message (``start``) names the workspace: the handler
authorizes on it before acting on anything."""


class AccessDenied(Exception):
    """The decision refused the call: UNAUTHENTICATED or PERMISSION_DENIED, with why."""

    def __init__(self, code: grpc.StatusCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def enforceable_rule(method: str) -> Rule:
    """The rule of ``method``, checked to be one the enforcement can apply: a rule that needs
    a workspace must find one in the request. Raises ``MissingRule`` otherwise, at import of
    the servicer, so an RPC without a decision is never served."""
    rule = rule_of(method)
    if rule.workspace_role and not _names_a_workspace(method):
        raise MissingRule(f"{method} needs a workspace role but its request names no workspace")
    return rule


def _names_a_workspace(method: str) -> bool:
    fields = SERVICE.methods_by_name[method].input_type.fields_by_name
    named_elsewhere = WORKSPACE_BY_NAME | OWN_MEMBERSHIPS | DECIDED_ON_FIRST_MESSAGE
    return "workspace_scope" in fields or method in named_elsewhere


def caller_of(principal: Principal) -> Caller | None:
    if not principal.subject:
        return None
    return Caller(principal.subject, principal.platform_admin, principal.user, principal.scopes)


def target_of(method: str, request: Any) -> tuple[Target, str | None]:
    """What the request reaches, and the workspace name when that is one workspace."""
    fields = request.DESCRIPTOR.fields_by_name
    if "global" in fields and getattr(request, "global"):
        return Target.GLOBAL, None
    if "workspace_scope" in fields:
        selector = request.workspace_scope
        if selector.HasField("all_workspaces"):
            return Target.ALL_WORKSPACES, None
        return Target.WORKSPACE, _workspace_name(selector.workspace, "workspace_scope.workspace")
    if method in WORKSPACE_BY_NAME:
        name: str = request.name
        if not name:
            raise InvalidArgument.single("name", "name is required")
        return Target.WORKSPACE, _workspace_name(name, "name")
    if method in OWN_MEMBERSHIPS:
        return Target.MEMBERSHIPS, None
    return Target.NOTHING, None


def _workspace_name(name: str, field: str) -> str:
    require_valid(validate_workspace(name, field))
    return name or DEFAULT_WORKSPACE


async def membership(gw: Gateway, workspace: str, subject: str) -> MemberRole:
    member = await gw.repos.workspaces.member(workspace, subject)
    if member is None:
        return MemberRole.NONE
    if member.role == openshell_pb2.WORKSPACE_ROLE_ADMIN:
        return MemberRole.ADMIN
    if member.role == openshell_pb2.WORKSPACE_ROLE_USER:
        return MemberRole.USER
    return MemberRole.NONE


async def authorize(gw: Gateway, method: str, rule: Rule, request: Message) -> None:
    """Return when the current caller may make this call; raise ``AccessDenied`` if not."""
    caller = caller_of(current_principal())
    if caller is None and rule.auth_mode != "unauthenticated":
        raise AccessDenied(grpc.StatusCode.UNAUTHENTICATED, "authentication required")
    target, workspace = target_of(method, request)
    role = MemberRole.NONE
    if workspace is not None and needs_membership(rule, caller, target):
        assert caller is not None
        role = await membership(gw, workspace, caller.subject)
    decision = decide(rule, caller, target, role)
    if decision.verdict is Verdict.UNAUTHENTICATED:
        raise AccessDenied(grpc.StatusCode.UNAUTHENTICATED, decision.reason)
    if decision.verdict is Verdict.PERMISSION_DENIED:
        where = f" in workspace {workspace!r}" if workspace else ""
        raise AccessDenied(grpc.StatusCode.PERMISSION_DENIED, f"{decision.reason}{where}")
