"""The role table end to end behind a stand-in authenticator: every served RPC, called by
each kind of caller in two workspaces, over real gRPC on a real store, answers what
docs/security.md's RPC table says.

Callers (tests/support/role_table.py): a platform admin; a workspace admin of ``team-a`` who
is a plain user of ``team-b``; a workspace user of ``team-a``; a member of ``team-a`` whose
token carries only ``sandbox:read`` (scope checks on); and a call without credentials. Each
calls every RPC in ``team-a`` and in ``team-b``. The same probes and expectations run behind
the real OIDC authenticator in tests/auth/test_role_table_oidc.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from shellgate.controller.auth.principal import Principal
from shellgate.store import Store
from tests.support.bearer import NamedBearer, bearer
from tests.support.fake_driver import FakeDriver
from tests.support.gateway import Running, running_gateway
from tests.support.role_table import (
    CALLERS,
    GHOST,
    OTHER,
    OWN,
    Caller,
    Metadata,
    P,
    documented_variants,
    mismatches,
    probed,
    seed,
    ws,
)
from tests.support.rpc_table import documented_rpcs


def principal(caller: Caller) -> Principal:
    return Principal(
        caller.subject,
        caller.display_name,
        "test",
        caller.roles,
        caller.scopes,
        caller.platform_admin,
        True,
    )


def credentials(name: str) -> Metadata:
    return bearer(name)


@pytest.fixture
async def secured(store: Store) -> AsyncIterator[Running]:
    authenticator = NamedBearer({name: principal(c) for name, c in CALLERS.items()})
    async with running_gateway(
        store, FakeDriver(), authenticators=[authenticator], anonymous=None
    ) as gw:
        await seed(gw.stub, bearer("padmin"))
        yield gw


async def test_every_rpc_answers_as_the_table_says(secured: Running) -> None:
    rpcs, variants = probed()
    assert rpcs == set(documented_rpcs()), "every documented RPC is probed"
    assert variants == documented_variants(), "every documented variant is probed"
    found = await mismatches(secured.stub, credentials)
    assert not found, "\n".join(found)


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
    assert (me.subject, me.display_name, me.identity_provider) == (
        CALLERS["reader"].subject,
        "Rae",
        "test",
    )
    assert list(me.roles) == ["openshell-user"] and list(me.scopes) == ["sandbox:read"]
    info = await secured.stub.GetGatewayInfo(P.GetGatewayInfoRequest(), metadata=bearer("padmin"))
    assert info.status == P.SERVICE_STATUS_HEALTHY and info.gateway_version
    assert [d.name for d in info.compute_drivers] == [secured.driver.name]
    assert list(info.extensions[0].supported_capabilities) == ["test-bearer"]


async def test_interactive_exec_is_authorized_before_it_takes_a_slot(secured: Running) -> None:
    """An exec slot is for a caller the table admits: a non-member is refused for who it is,
    not for how busy the replica is, and a stream that never names its workspace holds none
    (else any authenticated caller could occupy every slot by opening silent streams)."""
    slots = secured.gateway.exec_slots
    silent: asyncio.Queue[P.ExecSandboxInput | None] = asyncio.Queue()

    async def never_starts() -> AsyncIterator[P.ExecSandboxInput]:
        while (message := await silent.get()) is not None:
            yield message

    opened = secured.stub.ExecSandboxInteractive(never_starts(), metadata=bearer("wuser"))
    await asyncio.sleep(0.2)  # the server has the call and waits for its first message
    assert slots.held == 0
    opened.cancel()
    for _ in range(100):  # whatever the call held, the server gives back on the cancellation
        if slots.held == 0:
            break
        await asyncio.sleep(0.02)
    taken = 0
    while slots.take():  # a busy replica: every slot held
        taken += 1
    try:
        start = P.ExecSandboxRequest(sandbox="box", command=["true"], workspace_scope=ws(OTHER))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in secured.stub.ExecSandboxInteractive(
                iter([P.ExecSandboxInput(start=start)]), metadata=bearer("wuser")
            ):
                pass
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        start.workspace_scope.CopyFrom(ws(OWN))
        with pytest.raises(grpc.aio.AioRpcError) as busy:
            async for _ in secured.stub.ExecSandboxInteractive(
                iter([P.ExecSandboxInput(start=start)]), metadata=bearer("wuser")
            ):
                pass
        assert busy.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    finally:
        for _ in range(taken):
            slots.give_back()
