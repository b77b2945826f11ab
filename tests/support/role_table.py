"""The role table as data: one probe per documented RPC (and per variant of a row with its
own role), the callers of the end-to-end check with their memberships in two workspaces, and
the answer docs/security.md's RPC table gives each caller for each probe.

Both role-table checks use this module: one behind a stand-in authenticator
(tests/gateway/test_role_table.py), one behind the real OIDC authenticator with tokens from a
throwaway issuer (tests/auth/test_role_table_oidc.py). The expectations are written once, so
the two cannot drift apart.

The expected answer comes from the documented table alone: the role and scope of the row,
the caller's membership and scopes. When the table allows the call, the answer is the one
the probe's request earns from the handler (OK, or NOT_FOUND for a name that does not
exist, FAILED_PRECONDITION for deleting a workspace that is not empty or rotating a credential
without a refresh, UNIMPLEMENTED for image staging, which shellgate does not serve); when it does
not, PERMISSION_DENIED, or UNAUTHENTICATED without credentials. A refused call never says
NOT_FOUND, so a refusal does not reveal whether the object exists.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from shellgate.api import datamodel_pb2, openshell_pb2, openshell_pb2_grpc, sandbox_pb2
from shellgate.reconcilers.access import SERVICE
from tests.config.helpers import bool_value, global_setting, rule
from tests.support.rpc_table import SECURITY_DOC, Documented, documented_rpcs

P = openshell_pb2
D = datamodel_pb2
OWN, OTHER = "team-a", "team-b"
WORKSPACES = (OWN, OTHER)
GHOST = "ghost"
ADMIN_ROLE, USER_ROLE = "openshell-admin", "openshell-user"
ALL_SCOPES = "openshell:all"
"""The documented scope that grants every other scope."""

Metadata = Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Caller:
    """One caller of the check: who the credential says it is, and its memberships.

    ``subject`` differs from the caller's short name on purpose: memberships are keyed by the
    verified subject, so a gateway that keyed them by anything else would fail the check.
    ``scopes`` None means the credential carries no scope restriction.
    """

    subject: str
    display_name: str
    roles: frozenset[str]
    scopes: frozenset[str] | None
    memberships: dict[str, int]  # workspace -> WORKSPACE_ROLE_*

    @property
    def platform_admin(self) -> bool:
        return ADMIN_ROLE in self.roles


CALLERS: dict[str, Caller] = {
    "padmin": Caller("sub-3f1e-padmin", "Pat", frozenset({ADMIN_ROLE}), None, {}),
    "wadmin": Caller(  # admin of one workspace, a plain user of the other
        "sub-8a2c-wadmin",
        "Wes",
        frozenset({USER_ROLE}),
        None,
        {OWN: P.WORKSPACE_ROLE_ADMIN, OTHER: P.WORKSPACE_ROLE_USER},
    ),
    "wuser": Caller(
        "sub-51d0-wuser", "Uma", frozenset({USER_ROLE}), None, {OWN: P.WORKSPACE_ROLE_USER}
    ),
    "reader": Caller(  # a member whose token carries only sandbox:read
        "sub-c7b9-reader",
        "Rae",
        frozenset({USER_ROLE}),
        frozenset({"sandbox:read"}),
        {OWN: P.WORKSPACE_ROLE_USER},
    ),
}
CALLER_NAMES: list[str | None] = [*CALLERS, None]  # None: no credentials
_unique = itertools.count()


def ws(name: str) -> D.WorkspaceSelector:
    return D.WorkspaceSelector(workspace=name)


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_unique)}"


def provider(name: str, workspace: str) -> P.CreateProviderRequest:
    message = D.Provider(type="github", credentials={"TOKEN": "x"})
    message.metadata.name = name
    return P.CreateProviderRequest(provider=message, workspace_scope=ws(workspace))


def update_provider(workspace: str) -> P.UpdateProviderRequest:
    message = D.Provider(type="github")
    message.metadata.name = GHOST
    return P.UpdateProviderRequest(provider=message, workspace_scope=ws(workspace))


def template(name: str, workspace: str) -> P.CreateSandboxTemplateRequest:
    made = P.SandboxWorkloadTemplate()
    made.metadata.name = name
    made.spec.workload.image = "ghcr.io/example/base:1"
    return P.CreateSandboxTemplateRequest(template=made, workspace_scope=ws(workspace))


def profile_item(profile_id: str) -> P.ProviderProfileImportItem:
    """A custom provider profile that passes lint, so a call reaches the store."""
    made = P.ProviderProfile(id=profile_id, display_name="Acme")
    made.credentials.add(name="token", env_vars=["ACME_TOKEN"], required=True)
    made.endpoints.append(sandbox_pb2.NetworkEndpoint(host="api.acme.dev", port=443))
    return P.ProviderProfileImportItem(profile=made, source=f"{profile_id}.yaml")


@dataclass(frozen=True)
class Probe:
    """One call of ``rpc``: its request in a workspace, and the answer it earns if allowed."""

    rpc: str
    request: Callable[[str], Any]
    allowed: str = "OK"
    variant: str = ""  # a documented variant with its own role (global, all_workspaces)


PROBES = [
    Probe("Health", lambda w: P.HealthRequest()),
    Probe("GetCurrentUser", lambda w: P.GetCurrentUserRequest()),
    Probe("GetGatewayInfo", lambda w: P.GetGatewayInfoRequest()),
    Probe(
        "CreateSandbox",
        lambda w: P.CreateSandboxRequest(
            name=unique("s"), spec=P.SandboxSpec(), workspace_scope=ws(w)
        ),
    ),
    Probe("GetSandbox", lambda w: P.GetSandboxRequest(name="box", workspace_scope=ws(w))),
    Probe("ListSandboxes", lambda w: P.ListSandboxesRequest(workspace_scope=ws(w))),
    Probe(
        "ListSandboxes",
        lambda w: P.ListSandboxesRequest(
            workspace_scope=D.WorkspaceSelector(all_workspaces=D.AllWorkspaces())
        ),
        variant="all_workspaces",
    ),
    Probe(
        "ListSandboxProviders",
        lambda w: P.ListSandboxProvidersRequest(sandbox="box", workspace_scope=ws(w)),
    ),
    Probe(
        "AttachSandboxProvider",
        lambda w: P.AttachSandboxProviderRequest(
            sandbox=GHOST, provider="key", workspace_scope=ws(w)
        ),
        "NOT_FOUND",
    ),
    Probe(
        "DetachSandboxProvider",
        lambda w: P.DetachSandboxProviderRequest(
            sandbox=GHOST, provider="key", workspace_scope=ws(w)
        ),
        "NOT_FOUND",
    ),
    Probe(
        "DeleteSandbox",
        lambda w: P.DeleteSandboxRequest(name=GHOST, workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "StopSandbox",
        lambda w: P.StopSandboxRequest(name=GHOST, workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "StartSandbox",
        lambda w: P.StartSandboxRequest(name=GHOST, workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe("CreateProvider", lambda w: provider(unique("p"), w)),
    Probe("GetProvider", lambda w: P.GetProviderRequest(name="key", workspace_scope=ws(w))),
    Probe("ListProviders", lambda w: P.ListProvidersRequest(workspace_scope=ws(w))),
    Probe(
        "ListProviders",
        lambda w: P.ListProvidersRequest(
            workspace_scope=D.WorkspaceSelector(all_workspaces=D.AllWorkspaces())
        ),
        variant="all_workspaces",
    ),
    Probe("UpdateProvider", update_provider, "NOT_FOUND"),
    Probe(
        "DeleteProvider",
        lambda w: P.DeleteProviderRequest(name=GHOST, workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "GetSandboxConfig",
        lambda w: sandbox_pb2.GetSandboxConfigRequest(name="box", workspace_scope=ws(w)),
    ),
    Probe(
        "UpdateConfig",
        lambda w: P.UpdateConfigRequest(
            sandbox=GHOST, setting_key="log_level", delete_setting=True, workspace_scope=ws(w)
        ),
        "NOT_FOUND",
    ),
    Probe(
        "UpdateConfig",
        lambda w: global_setting("dummy_bool", bool_value(True)),
        variant="global",
    ),
    Probe(
        "GetSandboxPolicyStatus",
        lambda w: P.GetSandboxPolicyStatusRequest(sandbox=GHOST, workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "GetSandboxPolicyStatus",
        lambda w: P.GetSandboxPolicyStatusRequest(**{"global": True}),
        "NOT_FOUND",  # no global policy was ever set
        variant="global",
    ),
    Probe(
        "ListSandboxPolicies",
        lambda w: P.ListSandboxPoliciesRequest(sandbox=GHOST, workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "ListSandboxPolicies",
        lambda w: P.ListSandboxPoliciesRequest(**{"global": True}),
        variant="global",
    ),
    Probe(
        "ReportPolicyStatus",
        lambda w: P.ReportPolicyStatusRequest(
            sandbox_id=GHOST, version=1, status=P.POLICY_STATUS_LOADED
        ),
        "NOT_FOUND",
    ),
    Probe(
        "WatchSandbox",
        lambda w: P.WatchSandboxRequest(sandbox=GHOST, workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "SubmitPolicyAnalysis",
        lambda w: P.SubmitPolicyAnalysisRequest(name=GHOST, workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "GetDraftPolicy",
        lambda w: P.GetDraftPolicyRequest(sandbox=GHOST, workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "ApproveDraftChunk",
        lambda w: P.ApproveDraftChunkRequest(sandbox=GHOST, chunk_id="c", workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "RejectDraftChunk",
        lambda w: P.RejectDraftChunkRequest(sandbox=GHOST, chunk_id="c", workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "ApproveAllDraftChunks",
        lambda w: P.ApproveAllDraftChunksRequest(sandbox=GHOST, workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "EditDraftChunk",
        lambda w: P.EditDraftChunkRequest(
            sandbox=GHOST, chunk_id="c", proposed_rule=rule("example.com"), workspace_scope=ws(w)
        ),
        "NOT_FOUND",
    ),
    Probe(
        "UndoDraftChunk",
        lambda w: P.UndoDraftChunkRequest(sandbox=GHOST, chunk_id="c", workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "ClearDraftChunks",
        lambda w: P.ClearDraftChunksRequest(sandbox=GHOST, workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "GetDraftHistory",
        lambda w: P.GetDraftHistoryRequest(sandbox=GHOST, workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe("CreateWorkspace", lambda w: P.CreateWorkspaceRequest(name=unique("new"))),
    Probe("GetWorkspace", lambda w: P.GetWorkspaceRequest(name=w)),
    Probe("ListWorkspaces", lambda w: P.ListWorkspacesRequest()),
    Probe("DeleteWorkspace", lambda w: P.DeleteWorkspaceRequest(name=w), "FAILED_PRECONDITION"),
    Probe(
        "AddWorkspaceMember",
        lambda w: P.AddWorkspaceMemberRequest(
            workspace_scope=ws(w), principal_subject=unique("m"), role=P.WORKSPACE_ROLE_USER
        ),
    ),
    Probe(
        "RemoveWorkspaceMember",
        lambda w: P.RemoveWorkspaceMemberRequest(workspace_scope=ws(w), principal_subject=GHOST),
        "NOT_FOUND",
    ),
    Probe("ListWorkspaceMembers", lambda w: P.ListWorkspaceMembersRequest(workspace_scope=ws(w))),
    Probe(
        "ExecSandbox",
        lambda w: P.ExecSandboxRequest(sandbox=GHOST, command=["true"], workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "ExecSandboxInteractive",
        lambda w: P.ExecSandboxInput(
            start=P.ExecSandboxRequest(sandbox=GHOST, command=["true"], workspace_scope=ws(w))
        ),
        "NOT_FOUND",
    ),
    Probe(
        "GetSandboxLogs",
        lambda w: P.GetSandboxLogsRequest(sandbox=GHOST, workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "BeginRootfsTarStaging",
        lambda w: P.BeginRootfsTarStagingRequest(
            file_name="rootfs.tar", size_bytes=1, workspace_scope=ws(w)
        ),
        "UNIMPLEMENTED",  # shellgate stages no images
    ),
    Probe("CreateSandboxTemplate", lambda w: template(unique("t"), w)),
    Probe(
        "GetSandboxTemplate",
        lambda w: P.GetSandboxTemplateRequest(name=GHOST, workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe("ListSandboxTemplates", lambda w: P.ListSandboxTemplatesRequest(workspace_scope=ws(w))),
    Probe(
        "ListSandboxTemplates",
        lambda w: P.ListSandboxTemplatesRequest(
            workspace_scope=D.WorkspaceSelector(all_workspaces=D.AllWorkspaces())
        ),
        variant="all_workspaces",
    ),
    Probe(
        "DeleteSandboxTemplate",
        lambda w: P.DeleteSandboxTemplateRequest(name=GHOST, workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "GetSandboxProviderStatus",
        lambda w: P.GetSandboxProviderStatusRequest(
            sandbox=GHOST, provider="key", workspace_scope=ws(w)
        ),
        "NOT_FOUND",
    ),
    Probe(
        "ExposeService",
        lambda w: P.ExposeServiceRequest(
            sandbox=GHOST, name="web", target_port=8080, workspace_scope=ws(w)
        ),
        "NOT_FOUND",
    ),
    Probe(
        "GetService",
        lambda w: P.GetServiceRequest(sandbox=GHOST, name="web", workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe("ListServices", lambda w: P.ListServicesRequest(sandbox="box", workspace_scope=ws(w))),
    Probe(
        "DeleteService",
        lambda w: P.DeleteServiceRequest(sandbox=GHOST, name="web", workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "GetProviderCredentials",
        lambda w: P.GetProviderCredentialsRequest(
            name=GHOST, credential_keys=["TOKEN"], workspace_scope=ws(w)
        ),
        "NOT_FOUND",
    ),
    Probe("ListProviderProfiles", lambda w: P.ListProviderProfilesRequest(workspace_scope=ws(w))),
    Probe(
        "GetProviderProfile",
        lambda w: P.GetProviderProfileRequest(id=GHOST, workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "ImportProviderProfiles",
        lambda w: P.ImportProviderProfilesRequest(
            profiles=[profile_item(unique("acme"))], workspace_scope=ws(w)
        ),
    ),
    Probe(
        "UpdateProviderProfiles",
        lambda w: P.UpdateProviderProfilesRequest(
            id=GHOST,
            profile=profile_item(GHOST),
            expected_resource_version=1,
            workspace_scope=ws(w),
        ),
        "NOT_FOUND",
    ),
    Probe("LintProviderProfiles", lambda w: P.LintProviderProfilesRequest(workspace_scope=ws(w))),
    Probe(
        "DeleteProviderProfile",
        lambda w: P.DeleteProviderProfileRequest(id=GHOST, workspace_scope=ws(w)),
        "NOT_FOUND",
    ),
    Probe(
        "GetProviderRefreshStatus",
        lambda w: P.GetProviderRefreshStatusRequest(provider="key", workspace_scope=ws(w)),
    ),
    Probe(
        "ConfigureProviderRefresh",
        lambda w: P.ConfigureProviderRefreshRequest(
            provider=GHOST,
            credential_key="TOKEN",
            strategy=P.PROVIDER_CREDENTIAL_REFRESH_STRATEGY_STATIC,
            workspace_scope=ws(w),
        ),
        "NOT_FOUND",
    ),
    Probe(
        "RotateProviderCredential",
        lambda w: P.RotateProviderCredentialRequest(
            provider="key", credential_key="TOKEN", workspace_scope=ws(w)
        ),
        "FAILED_PRECONDITION",  # no refresh is configured for it
    ),
    Probe(
        "DeleteProviderRefresh",
        lambda w: P.DeleteProviderRefreshRequest(
            provider="key", credential_key="TOKEN", workspace_scope=ws(w)
        ),
        "NOT_FOUND",
    ),
    Probe("GetGatewayConfig", lambda w: sandbox_pb2.GetGatewayConfigRequest()),
]
PLATFORM_VARIANTS = {"global", "all_workspaces"}
"""Documented in the table's notes: these forms of a row need the platform admin."""


VARIANT_NOTE = re.compile(r"^\| `(?P<rpc>\w+)` \|.*`(?P<variant>global|all_workspaces)(: true)?`")


def documented_variants() -> set[tuple[str, str]]:
    """(RPC, variant) for every row whose notes give a form of the call its own role, so a
    check can insist that each of them is probed."""
    lines = SECURITY_DOC.read_text().split("## RPC table", 1)[1].splitlines()
    return {(m["rpc"], m["variant"]) for m in map(VARIANT_NOTE.match, lines) if m is not None}


def probed() -> tuple[set[str], set[tuple[str, str]]]:
    """The RPCs and the (RPC, variant) pairs ``PROBES`` call."""
    return {p.rpc for p in PROBES}, {(p.rpc, p.variant) for p in PROBES if p.variant}


def expected(probe: Probe, documented: Documented, caller: Caller | None, workspace: str) -> str:
    """The answer docs/security.md's table gives ``caller`` for ``probe`` in ``workspace``."""
    if documented.role == "public":
        return probe.allowed
    if caller is None:
        return "UNAUTHENTICATED"
    scopes = caller.scopes
    granted = scopes is None or ALL_SCOPES in scopes or documented.scope in scopes
    if documented.scope and not granted:
        return "PERMISSION_DENIED"
    if caller.platform_admin:
        return probe.allowed
    if probe.variant in PLATFORM_VARIANTS or documented.role.startswith("platform admin"):
        return "PERMISSION_DENIED"
    if documented.role == "authenticated":
        return probe.allowed
    membership = caller.memberships.get(workspace)
    needed = (
        P.WORKSPACE_ROLE_ADMIN if documented.role == "workspace admin" else P.WORKSPACE_ROLE_USER
    )
    if probe.rpc == "ListWorkspaces":  # the caller's own workspaces: any member may list them
        return probe.allowed
    if membership is None or membership < needed:
        return "PERMISSION_DENIED"
    return probe.allowed


SERVER_STREAMING = {m.name for m in SERVICE.methods if m.server_streaming}
"""Answered by a stream (WatchSandbox, the exec calls): the first event, or the error that
ends the stream, is the answer."""
CLIENT_STREAMING = {m.name for m in SERVICE.methods if m.client_streaming}
"""Asked by a stream (ExecSandboxInteractive): the probe's request is its only message (the
``start`` that names the workspace the call is authorized in), then the client half-closes."""


async def answer(
    stub: openshell_pb2_grpc.OpenShellStub, probe: Probe, metadata: Metadata, workspace: str
) -> str:
    method = getattr(stub, probe.rpc)
    request = probe.request(workspace)
    try:
        if probe.rpc in CLIENT_STREAMING:
            call = method(iter([request]), metadata=metadata, timeout=10)
        else:
            call = method(request, metadata=metadata, timeout=10)
        if probe.rpc in SERVER_STREAMING:
            async for _ in call:
                break
        else:
            await call
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return "OK"


async def seed(stub: openshell_pb2_grpc.OpenShellStub, admin: Metadata) -> None:
    """What the probes address, made by the platform admin through the API: both workspaces,
    a sandbox ``box`` and a provider ``key`` in each, and every caller's memberships (by its
    subject)."""
    for workspace in WORKSPACES:
        await stub.CreateWorkspace(P.CreateWorkspaceRequest(name=workspace), metadata=admin)
        await stub.CreateSandbox(
            P.CreateSandboxRequest(name="box", spec=P.SandboxSpec(), workspace_scope=ws(workspace)),
            metadata=admin,
        )
        await stub.CreateProvider(provider("key", workspace), metadata=admin)
    for caller in CALLERS.values():
        for workspace, role in caller.memberships.items():
            await stub.AddWorkspaceMember(
                P.AddWorkspaceMemberRequest(
                    workspace_scope=ws(workspace), principal_subject=caller.subject, role=role
                ),
                metadata=admin,
            )


async def mismatches(
    stub: openshell_pb2_grpc.OpenShellStub,
    credentials: Callable[[str], Metadata],
    probes: Sequence[Probe] = PROBES,
) -> list[str]:
    """Every call of ``probes`` by every caller (``credentials`` gives a caller's metadata) in
    both workspaces whose answer differs from the table's; empty when they all agree."""
    table = documented_rpcs()
    found = []
    for probe, name, workspace in itertools.product(probes, CALLER_NAMES, WORKSPACES):
        caller = CALLERS[name] if name is not None else None
        want = expected(probe, table[probe.rpc], caller, workspace)
        got = await answer(stub, probe, credentials(name) if name else (), workspace)
        if got != want:
            label = f"{probe.rpc}({probe.variant})" if probe.variant else probe.rpc
            found.append(f"{label} as {name} in {workspace}: {got}, table says {want}")
    return found
