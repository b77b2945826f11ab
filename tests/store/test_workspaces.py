"""The workspace repository on SQLite and Postgres: unique names, members, the fence that
keeps rows out of a deleted workspace, and delete's refusal while sandboxes or providers
remain."""

from __future__ import annotations

import asyncio

import pytest

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.store import Store, UniqueViolation
from shellgate.store.repositories import (
    WorkspaceMissing,
    WorkspaceNotEmpty,
    WorkspaceRepository,
    WorkspaceTerminating,
)
from tests.support.objects import provider, sandbox

USER = openshell_pb2.WORKSPACE_ROLE_USER
ADMIN = openshell_pb2.WORKSPACE_ROLE_ADMIN
ACTIVE = datamodel_pb2.WORKSPACE_PHASE_ACTIVE


@pytest.fixture
def workspaces(store: Store) -> WorkspaceRepository:
    return WorkspaceRepository(store)


async def test_names_are_unique(workspaces: WorkspaceRepository) -> None:
    made = await workspaces.create("team-a", {"tier": "gold"})
    assert made.metadata.resource_version == 1 and made.status.phase == ACTIVE
    with pytest.raises(UniqueViolation):
        await workspaces.create("team-a")
    found = await workspaces.find("team-a")
    assert found is not None and found.metadata.id == made.metadata.id
    assert found.metadata.labels["tier"] == "gold"


async def test_ensure_creates_once(workspaces: WorkspaceRepository) -> None:
    assert await workspaces.ensure("default") is True
    assert await workspaces.ensure("default") is False
    listed, _ = await workspaces.list_page(selector="", limit=10, page_token="")
    assert [w.metadata.name for w in listed] == ["default"]


async def test_list_pages_and_selects(workspaces: WorkspaceRepository) -> None:
    for n in range(5):
        await workspaces.create(f"w{n}", {"tier": "gold" if n % 2 == 0 else "silver"})
    first, token = await workspaces.list_page(selector="", limit=3, page_token="")
    rest, last = await workspaces.list_page(selector="", limit=3, page_token=token)
    assert sorted(w.metadata.name for w in [*first, *rest]) == [f"w{n}" for n in range(5)]
    assert last == ""
    gold, _ = await workspaces.list_page(selector="tier=gold", limit=10, page_token="")
    assert sorted(w.metadata.name for w in gold) == ["w0", "w2", "w4"]


async def test_members_are_unique_per_workspace(workspaces: WorkspaceRepository) -> None:
    await workspaces.create("a")
    await workspaces.create("b", {"tier": "gold"})
    subject = "CN=alice@example.com, O=Example"  # any text, not a DNS label
    member = await workspaces.add_member("a", subject, ADMIN)
    assert member.metadata.workspace == "a" and member.principal_subject == subject
    with pytest.raises(UniqueViolation):
        await workspaces.add_member("a", subject, USER)
    await workspaces.add_member("b", subject, USER)
    found = await workspaces.member("a", subject)
    assert found is not None and found.role == ADMIN
    assert await workspaces.member("a", "bob") is None
    listed, _ = await workspaces.list_members("a", limit=10, page_token="")
    assert [m.principal_subject for m in listed] == [subject]
    mine, _ = await workspaces.list_for_subject(subject, selector="", limit=10, page_token="")
    assert sorted(w.metadata.name for w in mine) == ["a", "b"]
    gold, _ = await workspaces.list_for_subject(
        subject, selector="tier=gold", limit=10, page_token=""
    )
    assert [w.metadata.name for w in gold] == ["b"]
    assert (await workspaces.list_for_subject("bob", selector="", limit=10, page_token=""))[0] == []


async def test_remove_member(workspaces: WorkspaceRepository) -> None:
    await workspaces.create("a")
    await workspaces.add_member("a", "alice", ADMIN)

    def refuse(member: openshell_pb2.WorkspaceMember) -> None:
        raise PermissionError(member.principal_subject)

    with pytest.raises(PermissionError):
        await workspaces.remove_member("a", "alice", refuse)
    assert await workspaces.member("a", "alice") is not None
    assert await workspaces.remove_member("a", "alice") is True
    assert await workspaces.remove_member("a", "alice") is False
    assert await workspaces.member("a", "alice") is None


async def test_members_need_a_workspace(workspaces: WorkspaceRepository) -> None:
    with pytest.raises(WorkspaceMissing):
        await workspaces.add_member("ghost", "alice", USER)


async def test_admit(workspaces: WorkspaceRepository) -> None:
    with pytest.raises(WorkspaceMissing):
        await workspaces.admit("new", create_missing=False)
    await workspaces.admit("new", create_missing=True)
    assert await workspaces.find("new") is None, "made only once the row is written"
    with pytest.raises(WorkspaceMissing):
        await workspaces.confirm("new")
    await workspaces.confirm("new", create_missing=True)
    assert await workspaces.find("new") is not None
    await workspaces.confirm("new")


async def test_delete_refuses_while_sandboxes_or_providers_remain(
    store: Store, workspaces: WorkspaceRepository
) -> None:
    await workspaces.create("a")
    box = await store.create_message(sandbox("box", workspace="a"))
    key = provider("gh")
    key.metadata.workspace = "a"
    await store.create_message(key)
    with pytest.raises(WorkspaceNotEmpty) as refused:
        await workspaces.delete("a")
    assert refused.value.kinds == ["sandbox", "provider"]
    after = await workspaces.find("a")
    assert after is not None and after.status.phase == ACTIVE, "a refused delete leaves it usable"
    await workspaces.admit("a", create_missing=False)
    assert await store.delete_if("sandbox", box.metadata.id, box.metadata.resource_version)
    with pytest.raises(WorkspaceNotEmpty) as still:
        await workspaces.delete("a")
    assert still.value.kinds == ["provider"]


async def test_delete_removes_members_and_fences_writers(
    store: Store, workspaces: WorkspaceRepository
) -> None:
    await workspaces.create("a")
    await workspaces.add_member("a", "alice", USER)
    await store.create_message(sandbox("elsewhere", workspace="b"))
    assert await workspaces.delete("a") is True
    assert await workspaces.find("a") is None
    assert await workspaces.member("a", "alice") is None
    assert await workspaces.delete("a") is False
    with pytest.raises(WorkspaceMissing):
        await workspaces.confirm("a")


async def test_a_terminating_workspace_admits_nothing(
    store: Store, workspaces: WorkspaceRepository
) -> None:
    """While a delete holds the TERMINATING mark (here: paused after its scan), a writer is
    refused before it writes and a writer that wrote before the mark fails its confirm."""
    await workspaces.create("a")
    seen: list[str] = []

    async def writers_meanwhile(name: str) -> None:
        with pytest.raises(WorkspaceTerminating):
            await workspaces.admit(name, create_missing=True)
        with pytest.raises(WorkspaceTerminating):
            await workspaces.confirm(name)
        with pytest.raises(WorkspaceTerminating):
            await workspaces.add_member(name, "late", USER)
        seen.append(name)

    workspaces.hooks.after_contents_scan = writers_meanwhile
    assert await workspaces.delete("a") is True
    assert seen == ["a"]
    assert await workspaces.member("a", "late") is None


async def test_replicas_starting_together_make_one_default(
    store: Store, second_store: Store
) -> None:
    """Every replica ensures ``default`` at start; racing ones agree on one row."""
    made = await asyncio.gather(
        *(WorkspaceRepository(s).ensure("default") for s in (store, second_store, store))
    )
    assert sorted(made) == [False, False, True]
    listed, _ = await WorkspaceRepository(second_store).list_page(
        selector="", limit=10, page_token=""
    )
    assert [w.metadata.name for w in listed] == ["default"]
