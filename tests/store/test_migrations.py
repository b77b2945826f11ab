"""Migrations: upgrade from the pre-CAS schema, and several processes migrating at once.

The migrating processes are released together at a barrier, so they really overlap.
"""

from __future__ import annotations

import asyncio

import pytest

from shellgate.store import MigrationError, Store, WriteCondition, connect
from shellgate.store.migrations import load
from tests.store.test_listing import label_tables
from tests.support.racing import run_in_processes, wait_for_the_others

PRE_CAS_VERSION = 1
ROWS = [
    ("s1", "sandbox", "alpha", None, None, None),
    ("s2", "sandbox", "beta", None, None, None),
    ("p1", "provider", "gh", None, None, None),
    ("r1", "sandbox_policy", None, "s1", 1, "loaded"),
]


async def insert_pre_cas_rows(store: Store, url: str) -> None:
    """Rows as the pre-CAS gateway wrote them: no resource_version, no workspace columns."""
    if url.startswith("sqlite:"):
        for row in ROWS:
            await store._rows(  # type: ignore[attr-defined]
                "INSERT INTO objects (id, object_type, name, scope, version, status, payload, "
                "created_at_ms, updated_at_ms, labels) "
                "VALUES (?, ?, ?, ?, ?, ?, x'00', 1, 1, '{}')",
                row,
            )
    else:
        async with store._connection() as conn:  # type: ignore[attr-defined]
            for row in ROWS:
                await conn.execute(
                    "INSERT INTO objects (id, object_type, name, scope, version, status, payload, "
                    "created_at_ms, updated_at_ms) VALUES ($1, $2, $3, $4, $5, $6, '\\x00', 1, 1)",
                    *row,
                )


async def test_upgrade_from_pre_cas_schema_backfills_version_one(store_url: str) -> None:
    old = await connect(store_url, migrate_to=PRE_CAS_VERSION)
    assert await old.schema_version() == PRE_CAS_VERSION
    await insert_pre_cas_rows(old, store_url)
    await old.close()

    upgraded = await connect(store_url)
    try:
        assert await upgraded.schema_version() == max(m.version for m in load(upgraded.backend))
        for object_id, object_type, *_ in ROWS:
            record = await upgraded.get(object_type, object_id)
            assert record is not None, object_id
            assert record.resource_version == 1
            assert record.workspace == "default"
        alpha = await upgraded.get_by_name("sandbox", "alpha")
        assert alpha is not None and alpha.id == "s1"
    finally:
        await upgraded.close()


async def test_reconnect_applies_nothing_twice(store_url: str) -> None:
    for _ in range(2):
        store = await connect(store_url)
        await store.close()
    store = await connect(store_url)
    version = await store.schema_version()
    await store.close()
    assert version >= 3


def _migrate_in_process(url: str) -> int | str:
    """The schema version this process ends at, or why its migration failed."""

    async def run() -> int | str:
        wait_for_the_others()
        try:
            store = await connect(url)
        except MigrationError as exc:
            return f"migration failed: {exc}"
        try:
            return await store.schema_version()
        finally:
            await store.close()

    return asyncio.run(run())


def migrate_at_once(store_url: str) -> None:
    """4 processes connect to a new database at the same moment; each migration runs once."""
    versions = run_in_processes(_migrate_in_process, [(store_url,)] * 4)
    backend = "sqlite" if store_url.startswith("sqlite:") else "postgres"
    assert versions == [max(m.version for m in load(backend))] * 4, f"not all migrated: {versions}"

    async def count_rows() -> list[int]:
        store = await connect(store_url)
        try:
            if store_url.startswith("sqlite:"):
                rows = await store._rows(  # type: ignore[attr-defined]
                    "SELECT version FROM schema_migrations", ()
                )
                return [row[0] for row in rows]
            async with store._connection() as conn:  # type: ignore[attr-defined]
                return [r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")]
        finally:
            await store.close()

    applied = asyncio.run(count_rows())
    assert sorted(applied) == sorted(set(applied))


@pytest.mark.slow
def test_processes_starting_at_once_migrate_once(store_url: str) -> None:
    migrate_at_once(store_url)


async def test_labels_written_before_the_label_index_are_selectable(store_url: str) -> None:
    """Migration 005 indexes labels (SQLite: fills object_labels from every row): rows
    written before it are found by selectors after the upgrade, and stay in step after."""
    old = await connect(store_url, migrate_to=4)
    await old.put_if("sandbox", "s1", "one", b"", {"team": "x"}, WriteCondition.MUST_CREATE)
    await old.put_if("sandbox", "s2", "two", b"", {"team": "y"}, WriteCondition.MUST_CREATE)
    await old.close()
    upgraded = await connect(store_url)
    try:
        found = await upgraded.list("sandbox", selector="team in (x)")
        assert [record.id for record in found.records] == ["s1"]
        await upgraded.put_if("sandbox", "s1", "one", b"", {}, WriteCondition.match(1))
        assert (await upgraded.list("sandbox", selector="team")).records[0].id == "s2"
    finally:
        await upgraded.close()


async def test_labels_written_before_the_ordered_label_table_page_in_order(
    store_url: str,
) -> None:
    """Migration 007 (SQLite: rebuilds object_labels; Postgres: creates it, and drops the
    GIN index) fills the table with each object's labels and list order: rows written
    before it (in two workspaces) are found by equality, set and existence selectors, page
    by page in creation order, and the table keeps following writes."""
    old = await connect(store_url, migrate_to=6)
    for n in range(7):
        labels = {"team": "x" if n % 2 else "y", **({"tier": "1"} if n % 3 == 0 else {})}
        await old.put_if(
            "sandbox",
            f"s{n}",
            f"n{n}",
            b"",
            labels,
            WriteCondition.MUST_CREATE,
            workspace=f"w{n % 2}",
        )
    await old.close()
    upgraded = await connect(store_url)
    try:
        table, column = await label_tables(upgraded)
        assert table == column
        assert len(table) == 10  # seven team labels, three tier labels
        for selector, expected in [
            ("team=x", ["s1", "s3", "s5"]),
            ("team in (x, y)", [f"s{n}" for n in range(7)]),
            ("tier", ["s0", "s3", "s6"]),
            ("tier,team=y", ["s0", "s6"]),
        ]:
            seen, token = [], ""
            while True:
                page = await upgraded.list(
                    "sandbox", workspace=None, selector=selector, limit=2, page_token=token
                )
                seen += [record.id for record in page.records]
                token = page.next_page_token
                if not token:
                    break
            assert seen == expected, selector
        in_w0 = await upgraded.list("sandbox", workspace="w0", selector="team=y")
        assert [record.id for record in in_w0.records] == ["s0", "s2", "s4", "s6"]
        await upgraded.put_if("sandbox", "s1", "n1", b"", {"team": "y"}, WriteCondition.match(1))
        assert await upgraded.delete_if("sandbox", "s3", 1)
        found = await upgraded.list("sandbox", workspace=None, selector="team=x")
        assert [record.id for record in found.records] == ["s5"]
        table, column = await label_tables(upgraded)
        assert table == column
    finally:
        await upgraded.close()
