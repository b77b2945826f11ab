"""Workspace writes raced across OS processes, as replicas on one database would, on SQLite
and Postgres: memberships added and removed by two processes at once, and DeleteWorkspace
against a sandbox created in the workspace at the same moment.

Every round starts at a ``multiprocessing.Barrier``. The fence's hook points sleep a random
few milliseconds so that rounds land on every interleaving, the bad ones included. Each race
has companions that remove one guard inside the worker processes only and show the race's
own assertion then fails.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from shellgate.api import openshell_pb2
from shellgate.store import Store, UniqueViolation, connect, sql
from shellgate.store.repositories import (
    WorkspaceMissing,
    WorkspaceNotEmpty,
    WorkspaceRepository,
    WorkspaceTerminating,
)
from tests.support.objects import sandbox
from tests.support.racing import run_in_processes, wait_for_the_others

pytestmark = pytest.mark.slow

MEMBER_ROUNDS = 15
DELETE_ROUNDS = 20
USER = openshell_pb2.WORKSPACE_ROLE_USER


def _make_create_replace() -> None:
    """MUST_CREATE overwrites the row holding the name instead of failing."""
    sql.must_create_on_duplicate = lambda: (  # type: ignore[assignment]
        "ON CONFLICT (object_type, workspace, name) WHERE name IS NOT NULL "
        "DO UPDATE SET payload = excluded.payload"
    )


# --- memberships: two processes add, then remove, the same subject -------------------------


def _member_worker(url: str, rounds: int, without_guard: bool) -> list[tuple[str, str]]:
    if without_guard:
        _make_create_replace()

    async def run() -> list[tuple[str, str]]:
        store = await connect(url)
        workspaces = WorkspaceRepository(store)
        answers = []
        try:
            for round_ in range(rounds):
                subject = f"m{round_}"
                wait_for_the_others()
                try:
                    await workspaces.add_member("team", subject, USER)
                    answers.append(("add", "ok"))
                except UniqueViolation:
                    answers.append(("add", "taken"))
                wait_for_the_others()
                removed = await workspaces.remove_member("team", subject)
                answers.append(("remove", "ok" if removed else "absent"))
        finally:
            await store.close()
        return answers

    return asyncio.run(run())


async def race_members(store: Store, store_url: str, *, without_guard: bool) -> None:
    await WorkspaceRepository(store).create("team")
    per_process = await asyncio.to_thread(
        run_in_processes, _member_worker, [(store_url, MEMBER_ROUNDS, without_guard)] * 2
    )
    for round_ in range(MEMBER_ROUNDS):
        adds = [answers[2 * round_][1] for answers in per_process]
        removes = [answers[2 * round_ + 1][1] for answers in per_process]
        assert sorted(adds) == ["ok", "taken"], f"round {round_}: two adds won: {adds}"
        assert sorted(removes) == ["absent", "ok"], f"round {round_}: removes {removes}"
    members, _ = await WorkspaceRepository(store).list_members("team", limit=100, page_token="")
    assert list(members) == []


async def test_concurrent_member_writes_have_one_winner(store: Store, store_url: str) -> None:
    await race_members(store, store_url, without_guard=False)


async def test_member_adds_without_must_create_both_win(store: Store, store_url: str) -> None:
    with pytest.raises(AssertionError, match="two adds won"):
        await race_members(store, store_url, without_guard=True)


# --- DeleteWorkspace against a sandbox created in it ----------------------------------------


async def _jitter(_key: str) -> None:
    await asyncio.sleep(random.uniform(0, 0.02))


def _unguard(workspaces: WorkspaceRepository, guard: str) -> None:
    if guard == "recheck":

        async def trust(_name: str, **_options: object) -> None:
            return None

        workspaces.confirm = trust  # type: ignore[method-assign]
    elif guard == "mark":

        async def unmarked(record, _phase):  # type: ignore[no-untyped-def]
            return record

        workspaces._mark = unmarked  # type: ignore[method-assign]


def _delete_worker(url: str, rounds: int, removed_guard: str) -> list[str]:
    async def run() -> list[str]:
        store = await connect(url)
        workspaces = WorkspaceRepository(store)
        workspaces.hooks.after_contents_scan = _jitter
        _unguard(workspaces, removed_guard)
        answers = []
        try:
            for round_ in range(rounds):
                wait_for_the_others()
                await _jitter("")  # sometimes after the creator's admission, sometimes before
                try:
                    deleted = await workspaces.delete(f"w{round_}")
                    answers.append("deleted" if deleted else "absent")
                except WorkspaceNotEmpty:
                    answers.append("not-empty")
        finally:
            await store.close()
        return answers

    return asyncio.run(run())


def _create_worker(url: str, rounds: int, removed_guard: str) -> list[str]:
    """What CreateSandbox does with the workspace: admit, write, re-check, undo if refused."""

    async def create(store: Store, workspaces: WorkspaceRepository, name: str) -> str:
        try:
            await workspaces.admit(name, create_missing=False)
        except (WorkspaceMissing, WorkspaceTerminating):
            return "refused-before"
        created = await store.create_message(sandbox("late", workspace=name))
        try:
            await workspaces.confirm(name)
        except (WorkspaceMissing, WorkspaceTerminating):
            meta = created.metadata
            await store.delete_if("sandbox", meta.id, meta.resource_version)
            return "refused-after"
        return "created"

    async def run() -> list[str]:
        store = await connect(url)
        workspaces = WorkspaceRepository(store)
        workspaces.hooks.after_admission = _jitter
        _unguard(workspaces, removed_guard)
        answers = []
        try:
            for round_ in range(rounds):
                wait_for_the_others()
                answers.append(await create(store, workspaces, f"w{round_}"))
        finally:
            await store.close()
        return answers

    return asyncio.run(run())


def _worker(role: str, url: str, rounds: int, removed_guard: str) -> list[str]:
    worker = _delete_worker if role == "delete" else _create_worker
    return worker(url, rounds, removed_guard)


async def race_delete_and_create(store: Store, store_url: str, *, removed_guard: str) -> None:
    workspaces = WorkspaceRepository(store)
    for round_ in range(DELETE_ROUNDS):
        await workspaces.create(f"w{round_}")
    deletes, creates = await asyncio.to_thread(
        run_in_processes,
        _worker,
        [
            ("delete", store_url, DELETE_ROUNDS, removed_guard),
            ("create", store_url, DELETE_ROUNDS, removed_guard),
        ],
    )
    orphans, both_won = [], []
    for round_ in range(DELETE_ROUNDS):
        name = f"w{round_}"
        left = await store.list("sandbox", workspace=name, limit=10)
        exists = await workspaces.find(name) is not None
        if left.records and not exists:
            orphans.append(name)
        if deletes[round_] == "deleted" and creates[round_] == "created":
            both_won.append(name)
    assert not orphans, f"sandboxes left in deleted workspaces: {orphans}"
    assert not both_won, f"both the delete and the create won: {both_won}"
    print(f"delete: {sorted(set(deletes))}, create: {sorted(set(creates))}")


async def test_delete_and_create_leave_no_sandbox_in_a_deleted_workspace(
    store: Store, store_url: str
) -> None:
    await race_delete_and_create(store, store_url, removed_guard="")


@pytest.mark.parametrize("guard", ["recheck", "mark"])
async def test_without_the_fence_sandboxes_outlive_their_workspace(
    store: Store, store_url: str, guard: str
) -> None:
    with pytest.raises(
        AssertionError, match=r"left in deleted workspaces|both the delete and the create won"
    ):
        await race_delete_and_create(store, store_url, removed_guard=guard)
