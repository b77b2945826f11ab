"""Races across OS processes: nothing acknowledged is lost, and creates have one winner.

Each worker process opens its own store on the same database (a real SQLite file shared by
processes, or one Postgres database), the way several gateway replicas would, and waits at a
barrier so that all of them start racing at the same moment.

Each race test has a companion that removes, inside the worker processes only, the one piece
of the SQL core the race depends on (the CAS predicate; MUST_CREATE failing on a taken name)
and shows that the race test's own assertion then fails. A race test that still passed
without its guard would prove nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from shellgate.api import openshell_pb2
from shellgate.store import (
    Conflict,
    Store,
    StoreUnavailable,
    UniqueViolation,
    WriteCondition,
    connect,
    sql,
    sqlite,
)
from shellgate.store.db_thread import FileUsers
from tests.store.test_listing import label_tables
from tests.support.objects import sandbox
from tests.support.racing import run_in_processes, wait_for_the_others

pytestmark = pytest.mark.slow

PROCESSES = 3
TASKS_PER_PROCESS = 8
INCREMENTS_PER_TASK = 50
CREATES_PER_PROCESS = 10


def _remove_cas_predicate() -> None:
    """Updates and deletes no longer check the version their caller read.

    The version is still bound (in a condition that is always true), so the statements
    keep the parameters the SQL core checks they bind: a mutant binding nothing failed
    that check, and the companion passed on that error instead of on lost increments."""
    sql.cas_predicate = lambda bind: (  # type: ignore[assignment]
        f"(resource_version = {bind('expected_version')} OR TRUE)"
    )


def _make_create_replace() -> None:
    """MUST_CREATE overwrites the row holding the name instead of failing."""
    sql.must_create_on_duplicate = lambda: (  # type: ignore[assignment]
        "ON CONFLICT (object_type, workspace, name) WHERE name IS NOT NULL "
        "DO UPDATE SET payload = excluded.payload"
    )


def _write_on_the_event_loop() -> None:
    """SQLite: each process believes it is the only one, so every write starts on the event
    loop (without a busy wait) and goes to the database thread only when it finds the lock
    held; the two paths then race each other across processes."""
    FileUsers.alone = lambda self, now: True  # type: ignore[method-assign]
    sqlite.SHARED_LOCK_SECONDS = 0.0


def _increment(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
    message.status.current_policy_version += 1
    return message


def _increment_worker(
    url: str, sandbox_id: str, without_guard: bool, on_the_loop: bool = False
) -> list[int]:
    """8 tasks each increment the counter 50 times; returns every version a call returned."""
    if without_guard:
        _remove_cas_predicate()
    if on_the_loop:
        _write_on_the_event_loop()

    async def task(store: Store) -> list[int]:
        versions = []
        for _ in range(INCREMENTS_PER_TASK):
            while True:
                try:
                    outcome = await store.update_message_cas(
                        openshell_pb2.Sandbox, sandbox_id, _increment
                    )
                except Conflict:
                    continue  # retries ran out: call again, as a client would
                except StoreUnavailable:
                    if not on_the_loop:
                        raise
                    # Writers all on their event loops starve one another of the lock (the
                    # reason a store shares it only when alone): call again, as a client would.
                    continue
                versions.append(outcome.message.metadata.resource_version)
                break
        return versions

    async def run() -> list[int]:
        store = await connect(url)
        try:
            wait_for_the_others()
            results = await asyncio.gather(*(task(store) for _ in range(TASKS_PER_PROCESS)))
        finally:
            await store.close()
        return [version for versions in results for version in versions]

    return asyncio.run(run())


async def race_increments(
    store: Store, store_url: str, *, without_guard: bool, on_the_loop: bool = False
) -> None:
    """3 processes x 8 tasks x 50 increments of one counter; every increment must count."""
    created = await store.create_message(sandbox("counter"))
    sandbox_id = created.metadata.id
    per_process = await asyncio.to_thread(
        run_in_processes,
        _increment_worker,
        [(store_url, sandbox_id, without_guard, on_the_loop)] * PROCESSES,
    )
    versions = [version for chunk in per_process for version in chunk]
    total = PROCESSES * TASKS_PER_PROCESS * INCREMENTS_PER_TASK
    assert len(versions) == total == 1200
    assert len(set(versions)) == total, "two successful calls returned the same version"
    final = await store.get_message(openshell_pb2.Sandbox, sandbox_id)
    assert final is not None
    counted = final.status.current_policy_version
    assert counted == total, f"lost increments: the counter is {counted}, not {total}"
    assert final.metadata.resource_version == total + 1
    assert sorted(versions) == list(range(2, total + 2))


async def test_no_lost_updates_across_processes(store: Store, store_url: str) -> None:
    await race_increments(store, store_url, without_guard=False)


async def test_without_the_cas_predicate_updates_are_lost(store: Store, store_url: str) -> None:
    with pytest.raises(AssertionError, match="lost increments"):
        await race_increments(store, store_url, without_guard=True)


async def test_no_lost_updates_with_sqlite_writes_on_the_event_loop(sqlite_url: str) -> None:
    store = await connect(sqlite_url)
    try:
        await race_increments(store, sqlite_url, without_guard=False, on_the_loop=True)
    finally:
        await store.close()


async def test_without_the_cas_predicate_event_loop_writes_are_lost(sqlite_url: str) -> None:
    store = await connect(sqlite_url)
    try:
        with pytest.raises(AssertionError, match="lost increments"):
            await race_increments(store, sqlite_url, without_guard=True, on_the_loop=True)
    finally:
        await store.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'races.db'}"


def _create_worker(url: str, attempts: int, without_guard: bool) -> list[str]:
    if without_guard:
        _make_create_replace()

    async def create_one(store: Store) -> str:
        try:
            await store.create_message(sandbox("contested"))
        except UniqueViolation as exc:
            return f"unique:{exc.constraint}"
        return "created"

    async def run() -> list[str]:
        store = await connect(url)
        try:
            wait_for_the_others()
            return list(await asyncio.gather(*(create_one(store) for _ in range(attempts))))
        finally:
            await store.close()

    return asyncio.run(run())


async def race_creates(store: Store, store_url: str, *, without_guard: bool) -> None:
    """2 processes x 10 creates of one name: exactly one wins, 19 see the name taken."""
    outcomes_per_process = await asyncio.to_thread(
        run_in_processes,
        _create_worker,
        [(store_url, CREATES_PER_PROCESS, without_guard)] * 2,
    )
    outcomes = [outcome for chunk in outcomes_per_process for outcome in chunk]
    assert outcomes.count("created") == 1, f"more than one create won: {outcomes}"
    assert outcomes.count("unique:objects_name_uq") == 19
    page = await store.list("sandbox")
    assert [record.name for record in page.records] == ["contested"]


async def test_must_create_race_has_one_winner(store: Store, store_url: str) -> None:
    await race_creates(store, store_url, without_guard=False)


async def test_must_create_that_replaces_has_many_winners(store: Store, store_url: str) -> None:
    with pytest.raises(AssertionError, match="more than one create won"):
        await race_creates(store, store_url, without_guard=True)


# ----- the label table and a delete racing a relabel ----------------------------------------


async def relabel_racing_a_delete(store: Store, store_url: str, *, in_statement: bool) -> None:
    """A relabel has committed; before its writer goes on, another replica deletes the row.

    Migration 007's triggers keep object_labels inside the writing statement, so the delete
    finds the new labels in the table and removes them with the row. ``in_statement=False``
    is the design without that guard: the update trigger dropped and the writer keeping the
    table itself after its write returns, from what it wrote. Its late rows then belong to
    a row that no longer exists. The interleaving is forced (the relabel's statement is held
    after it returns until the delete is done), not left to scheduling.
    """
    other = await connect(store_url)
    created = await store.put_if(
        "sandbox", "x", "x", b"", {"team": "a"}, WriteCondition.MUST_CREATE, workspace="w0"
    )
    if not in_statement:
        drop = "DROP TRIGGER object_labels_on_update"
        await store._execute(drop if store.backend == "sqlite" else f"{drop} ON objects")  # type: ignore[attr-defined]
    written, deleted = asyncio.Event(), asyncio.Event()
    original = store._row  # type: ignore[attr-defined]

    async def hold_after_the_write(sql: str, params: Any, *, read: bool = False) -> Any:
        row = await original(sql, params, read=read)
        if "UPDATE objects SET payload" in sql:
            written.set()
            await deleted.wait()
            if not in_statement:  # the writer keeps the label table after its write
                await original("DELETE FROM object_labels WHERE object_id = 'x'", ())
                each = "json_each" if store.backend == "sqlite" else "jsonb_each_text"
                cast = "" if store.backend == "sqlite" else "::jsonb"
                await original(
                    "INSERT INTO object_labels (key, value, object_type, created_at_ms, "
                    f"object_id, workspace) SELECT key, value, 'sandbox', {created.created_at_ms}, "
                    f"'x', 'w0' FROM {each}('{{\"team\": \"b\"}}'{cast})",
                    (),
                )
        return row

    store._row = hold_after_the_write  # type: ignore[attr-defined]
    try:
        relabel = asyncio.create_task(
            store.put_if("sandbox", "x", "x", b"1", {"team": "b"}, WriteCondition.match(1))
        )
        await asyncio.wait_for(written.wait(), 10)
        assert await other.delete_if("sandbox", "x", 2)
        deleted.set()
        await asyncio.wait_for(relabel, 10)
        del store._row  # type: ignore[attr-defined]
        table, column = await label_tables(store)
        assert table == column == [], f"labels of a deleted row: {table}"
        assert (await store.list("sandbox", workspace=None, selector="team=b")).records == []
    finally:
        deleted.set()
        with contextlib.suppress(AttributeError):
            del store._row  # type: ignore[attr-defined]
        await other.close()


async def test_a_delete_racing_a_relabel_leaves_no_labels(store: Store, store_url: str) -> None:
    await relabel_racing_a_delete(store, store_url, in_statement=True)


async def test_labels_kept_after_the_write_outlive_a_racing_delete(
    store: Store, store_url: str
) -> None:
    with pytest.raises(AssertionError, match="labels of a deleted row"):
        await relabel_racing_a_delete(store, store_url, in_statement=False)
