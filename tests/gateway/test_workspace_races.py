"""DeleteWorkspace against a concurrent create in the workspace, forced through the
workspace repository's hook points, on SQLite and Postgres.

Each race runs one request up to a hook point, runs the other to completion, then lets the
first finish. The guarantee: never a sandbox, provider or membership left in a workspace that
was deleted, and never both requests answered OK. Companions remove each guard of the fence
(the TERMINATING mark; the writer's re-check after its write) and show the race's own check
then fails. (The calls are the anonymous platform admin's, whose sandbox or provider create
in a missing workspace makes it: such a create after a finished delete succeeds in a
workspace made again, which is not a row left in a deleted one.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.store.records import ObjectRecord
from shellgate.store.repositories import MEMBER_TYPE
from tests.support.gateway import Running
from tests.support.hooks import Gate

P = openshell_pb2
D = datamodel_pb2
WS = "doomed"
REFUSALS = (
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ABORTED,
)
Result = Any


async def outcome(call: Awaitable[Any]) -> Result:
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        return error


def ok(result: Result) -> bool:
    return not isinstance(result, grpc.aio.AioRpcError)


def create_sandbox(gw: Running) -> Awaitable[Any]:
    return gw.stub.CreateSandbox(
        P.CreateSandboxRequest(
            name="late", spec=P.SandboxSpec(), workspace_scope=D.WorkspaceSelector(workspace=WS)
        )
    )


def create_provider(gw: Running) -> Awaitable[Any]:
    message = D.Provider(type="github", credentials={"TOKEN": "x"})
    message.metadata.name = "late"
    return gw.stub.CreateProvider(
        P.CreateProviderRequest(provider=message, workspace_scope=D.WorkspaceSelector(workspace=WS))
    )


def add_member(gw: Running) -> Awaitable[Any]:
    return gw.stub.AddWorkspaceMember(
        P.AddWorkspaceMemberRequest(
            workspace_scope=D.WorkspaceSelector(workspace=WS),
            principal_subject="late",
            role=P.WORKSPACE_ROLE_USER,
        )
    )


CREATES: dict[str, Callable[[Running], Awaitable[Any]]] = {
    "sandbox": create_sandbox,
    "provider": create_provider,
    "member": add_member,
}


@dataclass
class WorkspaceRace:
    create: Result
    deletion: Result
    workspace_exists: bool
    rows_inside: list[str]  # object types of rows left in the workspace
    implicit: bool  # the create may make a missing workspace (a platform admin's sandbox or
    # provider; these tests call as the anonymous platform admin), so after a finished delete
    # it may succeed by making the workspace again


async def observe(gw: Running, kind: str, create: Result, deletion: Result) -> WorkspaceRace:
    store = gw.gateway.store
    rows = []
    for kind in ("sandbox", "provider", MEMBER_TYPE):
        page = await store.list(kind, workspace=WS, limit=10)
        rows += [kind for _ in page.records]
    exists = await gw.gateway.repos.workspaces.find(WS) is not None
    return WorkspaceRace(create, deletion, exists, rows, implicit=kind != "member")


def check_nothing_in_a_deleted_workspace(race: WorkspaceRace) -> None:
    for result in (race.create, race.deletion):
        if not ok(result):
            assert result.code() in REFUSALS, result
    assert race.workspace_exists or not race.rows_inside, (
        f"left in the deleted workspace: {race.rows_inside}"
    )
    if ok(race.create) and ok(race.deletion):
        assert race.implicit and race.workspace_exists, "both the create and the delete"


async def delete_workspace(gw: Running) -> Any:
    return await gw.stub.DeleteWorkspace(P.DeleteWorkspaceRequest(name=WS))


async def create_inside_delete(gw: Running, kind: str) -> WorkspaceRace:
    """DeleteWorkspace marked the workspace and found it empty, and waits; a create runs."""
    await gw.stub.CreateWorkspace(P.CreateWorkspaceRequest(name=WS))
    gate = Gate()
    gw.gateway.repos.workspaces.hooks.after_contents_scan = gate
    deleting = await gate.hold(outcome(delete_workspace(gw)))
    created = await outcome(CREATES[kind](gw))
    gate.release()
    return await observe(gw, kind, created, await deleting)


async def delete_inside_create(gw: Running, kind: str) -> WorkspaceRace:
    """A create saw the workspace ACTIVE and waits before its write; the delete completes."""
    await gw.stub.CreateWorkspace(P.CreateWorkspaceRequest(name=WS))
    gate = Gate(WS)
    gw.gateway.repos.workspaces.hooks.after_admission = gate
    creating = await gate.hold(outcome(CREATES[kind](gw)))
    deleted = await outcome(delete_workspace(gw))
    assert ok(deleted), deleted
    gate.release()
    return await observe(gw, kind, await creating, deleted)


RACES = {"create-inside-delete": create_inside_delete, "delete-inside-create": delete_inside_create}


@pytest.mark.parametrize("kind", sorted(CREATES))
@pytest.mark.parametrize("race", sorted(RACES))
async def test_forced_workspace_race_leaves_nothing_behind(
    gw: Running, race: str, kind: str
) -> None:
    check_nothing_in_a_deleted_workspace(await RACES[race](gw, kind))


# The guards, removed one at a time.


def without_mark(gw: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """DeleteWorkspace scans and deletes without moving the row to TERMINATING first."""

    async def unmarked(record: ObjectRecord, _phase: int) -> ObjectRecord:
        return record

    monkeypatch.setattr(gw.gateway.repos.workspaces, "_mark", unmarked)


def without_recheck(gw: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writers no longer read the workspace again after writing their row."""

    async def trust(_name: str, **_options: object) -> None:
        return None

    monkeypatch.setattr(gw.gateway.repos.workspaces, "confirm", trust)


Unguard = Callable[[Running, pytest.MonkeyPatch], None]
COMPANIONS: dict[str, tuple[str, Unguard]] = {
    "create-inside-delete/no-mark": ("create-inside-delete", without_mark),
    "delete-inside-create/no-recheck": ("delete-inside-create", without_recheck),
}


@pytest.mark.parametrize("kind", sorted(CREATES))
@pytest.mark.parametrize("companion", sorted(COMPANIONS))
async def test_workspace_race_fails_without_its_guard(
    gw: Running, monkeypatch: pytest.MonkeyPatch, companion: str, kind: str
) -> None:
    race, unguard = COMPANIONS[companion]
    unguard(gw, monkeypatch)
    result = await RACES[race](gw, kind)
    with pytest.raises(AssertionError):
        check_nothing_in_a_deleted_workspace(result)


async def test_a_refused_delete_reopens_the_workspace(gw: Running) -> None:
    """A delete that finds a sandbox refuses and leaves the workspace ACTIVE for creates."""
    await gw.stub.CreateWorkspace(P.CreateWorkspaceRequest(name=WS))
    first = await outcome(create_sandbox(gw))
    assert ok(first), first
    refused = await outcome(delete_workspace(gw))
    assert not ok(refused) and refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "sandbox" in refused.details()
    assert ok(await outcome(create_provider(gw)))
    assert ok(await outcome(add_member(gw)))
    found = await gw.gateway.repos.workspaces.find(WS)
    assert found is not None and found.status.phase == D.WORKSPACE_PHASE_ACTIVE
