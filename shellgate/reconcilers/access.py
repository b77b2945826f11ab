"""Who may call which RPC: the authorization decision, with no I/O.

Every method of the wire schema carries its rule as a descriptor option (auth mode, workspace
role, global role, scope). ``rule_of`` reads it; ``decide`` combines it with the caller and,
for workspace-scoped methods, the caller's membership in the workspace the request targets.
The controller gathers those facts (the membership is a store read) and enforces the answer
before any handler runs, so a handler never sees a caller who may not be there.

Roles are the reference gateway's:

* Platform Admin (the admin role): everything, in every workspace, and the platform-scoped
  methods (workspaces themselves, global configuration, cross-workspace listings).
* Workspace Admin (an ``admin`` membership): what the rule marks ``workspace_role: admin`` in
  that workspace (providers, policies, settings, members), and what a user may do there.
* Workspace User (a ``user`` membership): what the rule marks ``workspace_role: user``
  (sandboxes, reading providers, attachments). Members also need the user role.

With scopes enabled (the principal's ``scopes`` is not None) the rule's scope must be granted
too, or ``openshell:all``. Scopes restrict a token; they never widen a role.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import cache
from typing import Any

from shellgate.api import openshell_pb2, options_pb2

SERVICE = openshell_pb2.DESCRIPTOR.services_by_name["OpenShell"]
ALL_SCOPES = "openshell:all"
PLATFORM_ADMIN = "platform_admin"

PUBLIC = "unauthenticated"
USER_MODES = frozenset({"bearer", "dual"})
"""Modes a user's credential satisfies. ``dual`` also admits a sandbox's own token, which
shellgate does not issue: for it, ``dual`` is ``bearer``."""
MACHINE_MODES = frozenset({"sandbox", "operator", "peer"})
"""Modes meant for a sandbox supervisor, an operator or a peer gateway. shellgate has no such
identities yet, so only a platform admin (who may do anything) passes them."""


class Verdict(enum.Enum):
    ALLOW = "OK"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"


class MemberRole(enum.IntEnum):
    """A caller's membership in one workspace, ordered: an admin may do what a user may."""

    NONE = 0
    USER = 1
    ADMIN = 2


@dataclass(frozen=True, slots=True)
class Rule:
    """A method's authorization option, as the schema declares it."""

    auth_mode: str
    workspace_role: str = ""
    global_role: str = ""
    scope: str = ""


class Target(enum.Enum):
    """What a request reaches besides its workspace (when it names none)."""

    NOTHING = "nothing"  # the caller itself (GetCurrentUser), the gateway (GetGatewayInfo)
    WORKSPACE = "workspace"  # one workspace, named in the request
    ALL_WORKSPACES = "all_workspaces"  # a listing across every workspace
    GLOBAL = "global"  # platform-scoped configuration (``global: true``)
    MEMBERSHIPS = "memberships"  # the workspaces the caller belongs to (ListWorkspaces)


@dataclass(frozen=True, slots=True)
class Caller:
    """What the decision needs of the principal (the controller's ``Principal`` fits)."""

    subject: str
    platform_admin: bool
    user: bool
    scopes: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW


def allow(reason: str) -> Decision:
    return Decision(Verdict.ALLOW, reason)


def deny(reason: str) -> Decision:
    return Decision(Verdict.PERMISSION_DENIED, reason)


class MissingRule(LookupError):
    """A method without an authorization option: it must not be served."""


@cache
def rule_of(method: str) -> Rule:
    """The rule the schema gives ``method``; ``MissingRule`` when it gives none, so that a
    served method without a decision cannot be built."""
    descriptor = SERVICE.methods_by_name.get(method)
    if descriptor is None:
        raise MissingRule(f"{method} is not a method of {SERVICE.full_name}")
    options: Any = descriptor.GetOptions()
    extension: Any = options_pb2.authorization
    if not options.HasExtension(extension):
        raise MissingRule(f"{method} has no authorization option")
    raw: options_pb2.AuthorizationRule = options.Extensions[extension]
    if not raw.auth_mode:
        raise MissingRule(f"{method} has an authorization option without an auth mode")
    return Rule(raw.auth_mode, raw.workspace_role, raw.global_role, raw.scope)


def decide(
    rule: Rule, caller: Caller | None, target: Target, membership: MemberRole = MemberRole.NONE
) -> Decision:
    """Whether ``caller`` may call a method with ``rule`` on ``target``.

    ``caller`` is None when the call carries no verified identity. ``membership`` is the
    caller's role in the target workspace (only read for ``Target.WORKSPACE``). The order
    matters for what a refusal reveals: identity first (UNAUTHENTICATED), then the token's
    scope, then roles; nothing here depends on whether the addressed object exists.
    """
    if rule.auth_mode == PUBLIC:
        return allow("public method")
    if caller is None or not caller.subject:
        return Decision(Verdict.UNAUTHENTICATED, "authentication required")
    if rule.scope and not has_scope(caller, rule.scope):
        return deny(f"the token lacks the scope {rule.scope!r}")
    if caller.platform_admin:
        return allow("platform admin")
    return _decide_for_non_admin(rule, caller, target, membership)


def _decide_for_non_admin(
    rule: Rule, caller: Caller, target: Target, membership: MemberRole
) -> Decision:
    if rule.auth_mode in MACHINE_MODES or rule.auth_mode not in USER_MODES:
        return deny(f"{rule.auth_mode!r} methods are for the platform admin")
    if rule.global_role:
        return deny("platform admin role required")
    if target is Target.GLOBAL:
        return deny("platform admin role required for global configuration")
    if target is Target.ALL_WORKSPACES:
        return deny("platform admin role required for cross-workspace operations")
    if not rule.workspace_role:
        return allow("any authenticated caller")
    if not caller.user:
        return deny("the user role is required")
    if target is Target.MEMBERSHIPS:
        return allow("listing the caller's own workspaces")
    if target is not Target.WORKSPACE:
        return deny("the request names no workspace")
    return _decide_membership(rule.workspace_role, membership)


def _decide_membership(required: str, membership: MemberRole) -> Decision:
    needed = MemberRole.ADMIN if required == "admin" else MemberRole.USER
    if membership is MemberRole.NONE:
        return deny("not a member of the workspace")
    if membership < needed:
        return deny(f"workspace role {required!r} required")
    return allow(f"workspace {membership.name.lower()}")


def has_scope(caller: Caller, scope: str) -> bool:
    """True when scope checks are off or the token grants ``scope`` (or every scope)."""
    if caller.scopes is None:
        return True
    return scope in caller.scopes or ALL_SCOPES in caller.scopes


def needs_membership(rule: Rule, caller: Caller | None, target: Target) -> bool:
    """True when ``decide`` would read the membership: saves the store read otherwise."""
    return (
        caller is not None
        and not caller.platform_admin
        and bool(rule.workspace_role)
        and target is Target.WORKSPACE
    )


def may_change_membership(caller: Caller, role: MemberRole) -> Decision:
    """Only a platform admin grants, or takes away, an ``admin`` membership; a workspace
    admin manages ``user`` members (the method's own rule already required that)."""
    if role is MemberRole.ADMIN and not caller.platform_admin:
        return deny("only a platform admin assigns or removes the workspace admin role")
    return allow("membership change")


def may_create_workspace_implicitly(caller: Caller) -> bool:
    """A platform admin creating a sandbox or provider in a workspace that does not exist
    creates the workspace with it (shellgate before workspaces had rows took any valid name
    as a workspace; keeping that keeps existing clients working). Nobody else can reach a
    missing workspace: they hold no membership in it."""
    return caller.platform_admin
