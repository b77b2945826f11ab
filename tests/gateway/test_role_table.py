"""The role table end to end: every served RPC, called by each kind of caller in two
workspaces, over real gRPC on a real store, answers what docs/security.md's RPC table says.

Callers: a platform admin; a workspace admin and a workspace user of ``team-a`` (members of
nothing else); a member of ``team-a`` whose token carries only ``sandbox:read`` (scope checks
on); and a call without credentials. Each calls every RPC in ``team-a`` and in ``team-b``.

The expected answer comes from the documented table alone: the role and scope of the row,
the caller's membership and scopes. When the table allows the call, the answer is the one
the probe's request earns from the handler (OK, or NOT_FOUND for a name that does not
exist, or FAILED_PRECONDITION for deleting a workspace that is not empty); when it does
not, PERMISSION_DENIED, or UNAUTHENTICATED without credentials. A refused call never says
NOT_FOUND, so a refusal does not reveal whether the object exists.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from shellgate.api import datamodel_pb2, openshell_pb2, sandbox_pb2
from shellgate.controller.auth.principal import Principal
from shellgate.store import Store
from tests.config.helpers import bool_value, global_setting, rule
from tests.support.bearer import NamedBearer, bearer
from tests.support.fake_driver import FakeDriver
from tests.support.gateway import Running, running_gateway
from tests.support.rpc_table import Documented, documented_rpcs

P = openshell_pb2
D = datamodel_pb2
OWN, OTHER = "team-a", "team-b"
GHOST = "ghost"

PRINCIPALS = {
    "padmin": Principal("padmin", "Pat", "test", frozenset({"openshell-admin"}), None, True, True),
    "wadmin": Principal("wadmin", "Wes", "test", frozenset({"openshell-user"}), None, False, True),
    "wuser": Principal("wuser", "Uma", "test", frozenset({"openshell-user"}), None, False, True),
    "reader": Principal(
        "reader",
        "Rae",
        "test",
        frozenset({"openshell-user"}),
        frozenset({"sandbox:read"}),
        False,
        True,
    ),
}
MEMBERSHIPS = {  # the callers' roles in team-a; nobody but the platform admin is in team-b
    "wadmin": P.WORKSPACE_ROLE_ADMIN,
    "wuser": P.WORKSPACE_ROLE_USER,
    "reader": P.WORKSPACE_ROLE_USER,
}
CALLERS = [*PRINCIPALS, None]  # None: no credentials
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
]
PLATFORM_VARIANTS = {"global", "all_workspaces"}
"""Documented in the table's notes: these forms of a row need the platform admin."""


def expected(probe: Probe, documented: Documented, caller: str | None, workspace: str) -> str:
    """The answer docs/security.md's table gives ``caller`` for ``probe`` in ``workspace``."""
    if documented.role == "public":
        return probe.allowed
    if caller is None:
        return "UNAUTHENTICATED"
    principal = PRINCIPALS[caller]
    scopes = principal.scopes
    if documented.scope and scopes is not None and documented.scope not in scopes:
        return "PERMISSION_DENIED"
    if principal.platform_admin:
        return probe.allowed
    if probe.variant in PLATFORM_VARIANTS or documented.role.startswith("platform admin"):
        return "PERMISSION_DENIED"
    if documented.role == "authenticated":
        return probe.allowed
    membership = MEMBERSHIPS.get(caller) if workspace == OWN else None
    needed = (
        P.WORKSPACE_ROLE_ADMIN if documented.role == "workspace admin" else P.WORKSPACE_ROLE_USER
    )
    if probe.rpc == "ListWorkspaces":  # the caller's own workspaces: any member may list them
        return probe.allowed
    if membership is None or membership < needed:
        return "PERMISSION_DENIED"
    return probe.allowed


async def answer(gw: Running, probe: Probe, caller: str | None, workspace: str) -> str:
    metadata = bearer(caller) if caller is not None else ()
    method = getattr(gw.stub, probe.rpc)
    try:
        call = method(probe.request(workspace), metadata=metadata, timeout=10)
        if probe.rpc == "WatchSandbox":
            async for _ in call:
                break
        else:
            await call
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return "OK"


@pytest.fixture
async def secured(store: Store) -> AsyncIterator[Running]:
    authenticator = NamedBearer(PRINCIPALS)
    async with running_gateway(
        store, FakeDriver(), authenticators=[authenticator], anonymous=None
    ) as gw:
        admin = bearer("padmin")
        for workspace in (OWN, OTHER):
            await gw.stub.CreateWorkspace(P.CreateWorkspaceRequest(name=workspace), metadata=admin)
            await gw.stub.CreateSandbox(
                P.CreateSandboxRequest(
                    name="box", spec=P.SandboxSpec(), workspace_scope=ws(workspace)
                ),
                metadata=admin,
            )
            await gw.stub.CreateProvider(provider("key", workspace), metadata=admin)
        for subject, role in MEMBERSHIPS.items():
            await gw.stub.AddWorkspaceMember(
                P.AddWorkspaceMemberRequest(
                    workspace_scope=ws(OWN), principal_subject=subject, role=role
                ),
                metadata=admin,
            )
        yield gw


async def test_every_rpc_answers_as_the_table_says(secured: Running) -> None:
    table = documented_rpcs()
    assert {p.rpc for p in PROBES} == set(table), "every documented RPC is probed"
    mismatches = []
    for probe, caller, workspace in itertools.product(PROBES, CALLERS, (OWN, OTHER)):
        want = expected(probe, table[probe.rpc], caller, workspace)
        got = await answer(secured, probe, caller, workspace)
        if got != want:
            name = f"{probe.rpc}({probe.variant})" if probe.variant else probe.rpc
            mismatches.append(f"{name} as {caller} in {workspace}: {got}, table says {want}")
    assert not mismatches, "\n".join(mismatches)


async def test_a_refusal_does_not_reveal_existence(secured: Running) -> None:
    """A non-member asking for a sandbox that exists and one that does not gets the same."""
    user = bearer("wuser")
    codes = set()
    for name in ("box", GHOST):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await secured.stub.GetSandbox(
                P.GetSandboxRequest(name=name, workspace_scope=ws(OTHER)), metadata=user
            )
        codes.add((refused.value.code(), refused.value.details()))
    with pytest.raises(grpc.aio.AioRpcError) as nowhere:
        await secured.stub.GetSandbox(
            P.GetSandboxRequest(name="box", workspace_scope=ws("no-such-ws")), metadata=user
        )
    assert len(codes) == 1 and nowhere.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert codes.pop()[0] == grpc.StatusCode.PERMISSION_DENIED


async def test_workspace_admin_cannot_touch_admin_memberships(secured: Running) -> None:
    wadmin, padmin = bearer("wadmin"), bearer("padmin")
    grant = P.AddWorkspaceMemberRequest(
        workspace_scope=ws(OWN), principal_subject="eve", role=P.WORKSPACE_ROLE_ADMIN
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await secured.stub.AddWorkspaceMember(grant, metadata=wadmin)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    await secured.stub.AddWorkspaceMember(grant, metadata=padmin)
    remove = P.RemoveWorkspaceMemberRequest(workspace_scope=ws(OWN), principal_subject="eve")
    with pytest.raises(grpc.aio.AioRpcError) as kept:
        await secured.stub.RemoveWorkspaceMember(remove, metadata=wadmin)
    assert kept.value.code() == grpc.StatusCode.PERMISSION_DENIED
    removed = await secured.stub.RemoveWorkspaceMember(remove, metadata=padmin)
    assert removed.outcome == P.DELETION_OUTCOME_COMPLETED


async def test_members_list_only_their_workspaces(secured: Running) -> None:
    mine = await secured.stub.ListWorkspaces(P.ListWorkspacesRequest(), metadata=bearer("wuser"))
    assert [w.metadata.name for w in mine.workspaces] == [OWN]
    every = await secured.stub.ListWorkspaces(P.ListWorkspacesRequest(), metadata=bearer("padmin"))
    assert {w.metadata.name for w in every.workspaces} == {"default", OWN, OTHER}


async def test_whoami_and_gateway_info(secured: Running) -> None:
    me = await secured.stub.GetCurrentUser(P.GetCurrentUserRequest(), metadata=bearer("reader"))
    assert (me.subject, me.display_name, me.identity_provider) == ("reader", "Rae", "test")
    assert list(me.roles) == ["openshell-user"] and list(me.scopes) == ["sandbox:read"]
    info = await secured.stub.GetGatewayInfo(P.GetGatewayInfoRequest(), metadata=bearer("padmin"))
    assert info.status == P.SERVICE_STATUS_HEALTHY and info.gateway_version
    assert [d.name for d in info.compute_drivers] == [secured.driver.name]
    assert list(info.extensions[0].supported_capabilities) == ["test-bearer"]
