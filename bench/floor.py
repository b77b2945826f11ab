"""The physical floors: the read-then-CAS of ``update_message_cas``, as short as a driver allows.

Each call SELECTs the row's payload and version, decodes the sandbox, increments its
counter, encodes it (deterministically, as the store does) and runs
``UPDATE ... SET payload, resource_version = resource_version + 1 WHERE id AND
resource_version RETURNING resource_version``. Nothing else: no labels or timestamps, no
retry loop, no observer, no record objects, no pool.

* SQLite: stdlib ``sqlite3``, one connection, called synchronously (no thread, no event
  loop turn), autocommit, WAL, ``synchronous=FULL``: the durability the store keeps.
* Postgres: one ``asyncpg`` connection with both statements prepared once, on a plain table
  of its own: without any change feed (the physical floor), or announcing each write the
  way migration 004's trigger did, or the way the store's statements do now; the
  differences price the change feed.
"""

from __future__ import annotations

import abc
import sqlite3
from urllib.parse import urlsplit

import asyncpg

from bench.objects import Sandbox, bench_sandbox

SQLITE_SELECT = "SELECT payload, resource_version FROM objects WHERE id = ?"
SQLITE_CAS = (
    "UPDATE objects SET payload = ?, resource_version = resource_version + 1 "
    "WHERE id = ? AND resource_version = ? RETURNING resource_version"
)


class FloorConflict(Exception):
    """The floor's CAS lost (never expected: the floor runs with one writer)."""


def next_payload(payload: bytes) -> bytes:
    """Decode, increment the counter, encode: the mutation the store's path applies."""
    message = Sandbox.FromString(payload)
    message.status.current_policy_version += 1
    return message.SerializeToString(deterministic=True)


class Floor(abc.ABC):
    """A driver-level read-then-CAS loop on one database."""

    @abc.abstractmethod
    async def update(self, object_id: str) -> int:
        """One read-then-CAS of ``object_id``; returns the new version."""

    @abc.abstractmethod
    async def settings(self) -> dict[str, str]:
        """The durability settings in force, read back from the database."""

    @abc.abstractmethod
    async def engine_version(self) -> str:
        """The database engine's version, as this connection reports it."""

    @abc.abstractmethod
    async def close(self) -> None: ...


class SqliteFloor(Floor):
    """Synchronous stdlib ``sqlite3``: ``update`` never suspends."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, path: str) -> SqliteFloor:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 5000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        return cls(conn)

    async def update(self, object_id: str) -> int:
        payload, version = self._conn.execute(SQLITE_SELECT, (object_id,)).fetchall()[0]
        written = self._conn.execute(
            SQLITE_CAS, (next_payload(payload), object_id, version)
        ).fetchall()
        if not written:
            raise FloorConflict(object_id)
        return int(written[0][0])

    async def settings(self) -> dict[str, str]:
        found = {}
        for pragma in ("journal_mode", "synchronous", "busy_timeout"):
            found[pragma] = str(self._conn.execute(f"PRAGMA {pragma}").fetchall()[0][0])
        synchronous = {"0": "OFF", "1": "NORMAL", "2": "FULL", "3": "EXTRA"}
        found["synchronous"] = synchronous.get(found["synchronous"], found["synchronous"])
        return found

    async def engine_version(self) -> str:
        return str(self._conn.execute("SELECT sqlite_version()").fetchall()[0][0])

    async def close(self) -> None:
        self._conn.close()


FEEDS = ("none", "trigger", "statement")
"""How a Postgres floor announces its writes: not at all (the physical floor), by the row
trigger migration 004 had, or by ``pg_notify`` in the writing statement (what the store
does since migration 005)."""

TRIGGER_FUNCTION = """
CREATE OR REPLACE FUNCTION bench_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('bench_objects', json_build_object(
        't', 'sandbox', 'i', NEW.id, 'v', NEW.resource_version, 'd', FALSE, 'm', 0)::text);
    RETURN NULL;
END;
$$"""


class PostgresFloor(Floor):
    """One asyncpg connection, the SELECT and the CAS prepared once, on its own table."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        select: asyncpg.prepared_stmt.PreparedStatement,
        cas: asyncpg.prepared_stmt.PreparedStatement,
        table: str,
    ) -> None:
        self._conn = conn
        self._select = select
        self._cas = cas
        self._table = table
        self.feed = table.removeprefix("bench_floor_")

    @classmethod
    async def open(cls, dsn: str, *, feed: str = "none") -> PostgresFloor:
        if feed not in FEEDS:
            raise ValueError(f"feed must be one of {FEEDS}, got {feed!r}")
        conn = await asyncpg.connect(dsn)
        table = f"bench_floor_{feed}"
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY, "
            "payload BYTEA NOT NULL, resource_version BIGINT NOT NULL)"
        )
        update = (
            f"UPDATE {table} SET payload = $1, resource_version = resource_version + 1 "
            "WHERE id = $2 AND resource_version = $3"
        )
        if feed == "trigger":
            await conn.execute(TRIGGER_FUNCTION)
            await conn.execute(f"DROP TRIGGER IF EXISTS bench_notify ON {table}")
            await conn.execute(
                f"CREATE TRIGGER bench_notify AFTER UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION bench_notify()"
            )
        if feed == "statement":
            cas_sql = (
                f"WITH written AS ({update} RETURNING id, resource_version) "
                "SELECT resource_version, pg_notify('bench_objects', json_build_object("
                "'t', 'sandbox', 'i', id, 'v', resource_version, 'd', FALSE, 'm', 0)::text) "
                "FROM written"
            )
        else:
            cas_sql = f"{update} RETURNING resource_version"
        select = await conn.prepare(f"SELECT payload, resource_version FROM {table} WHERE id = $1")
        return cls(conn, select, await conn.prepare(cas_sql), table)

    async def create_row(self) -> str:
        """A row of this floor's table holding a fresh bench sandbox; its id."""
        message = bench_sandbox()
        await self._conn.execute(
            f"INSERT INTO {self._table} VALUES ($1, $2, 1)",
            message.metadata.id,
            message.SerializeToString(deterministic=True),
        )
        return message.metadata.id

    async def update(self, object_id: str) -> int:
        row = await self._select.fetchrow(object_id)
        version = await self._cas.fetchval(next_payload(row[0]), object_id, row[1])
        if version is None:
            raise FloorConflict(object_id)
        return int(version)

    async def settings(self) -> dict[str, str]:
        names = (
            "fsync",
            "synchronous_commit",
            "full_page_writes",
            "wal_sync_method",
            "shared_buffers",
        )
        return {name: str(await self._conn.fetchval(f"SHOW {name}")) for name in names}

    async def engine_version(self) -> str:
        return str(await self._conn.fetchval("SHOW server_version"))

    async def close(self) -> None:
        await self._conn.close()


def sqlite_path(url: str) -> str:
    """The file a ``sqlite:///`` URL names (the same rule as shellgate.store.connect)."""
    return urlsplit(url).path[1:]


async def open_floor(url: str, *, feed: str = "none") -> Floor:
    """The physical floor for ``url`` (on Postgres, ``feed`` picks how writes announce)."""
    if url.startswith("sqlite:"):
        return SqliteFloor.open(sqlite_path(url))
    return await PostgresFloor.open(url, feed=feed)
