"""The floor: the same read-then-CAS as ``update_message_cas``, written straight on the driver.

Each call SELECTs the row's payload and version, decodes the sandbox, increments its
counter, encodes it (deterministically, as the store does) and runs
``UPDATE ... SET payload, resource_version = resource_version + 1 WHERE id AND
resource_version RETURNING resource_version``. Nothing else: no labels or timestamps written,
no retry loop, no observer, no record objects. The connection settings are the store's:

* SQLite: one aiosqlite connection in autocommit, ``busy_timeout`` 5000 ms, WAL,
  ``synchronous=FULL`` (SqliteStore.open);
* Postgres: one asyncpg pool of the store's size (1..10), one acquire per read-then-CAS.
"""

from __future__ import annotations

import abc
from urllib.parse import urlsplit

import aiosqlite
import asyncpg

from bench.objects import Sandbox

SQLITE_SELECT = "SELECT payload, resource_version FROM objects WHERE id = ?"
SQLITE_CAS = (
    "UPDATE objects SET payload = ?, resource_version = resource_version + 1 "
    "WHERE id = ? AND resource_version = ? RETURNING resource_version"
)
PG_SELECT = "SELECT payload, resource_version FROM objects WHERE id = $1"
PG_CAS = (
    "UPDATE objects SET payload = $1, resource_version = resource_version + 1 "
    "WHERE id = $2 AND resource_version = $3 RETURNING resource_version"
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
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    @classmethod
    async def open(cls, path: str, *, busy_timeout_ms: int = 5000) -> SqliteFloor:
        conn = await aiosqlite.connect(path, isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")
        return cls(conn)

    async def update(self, object_id: str) -> int:
        rows = list(await self._conn.execute_fetchall(SQLITE_SELECT, (object_id,)))
        payload, version = rows[0]
        written = list(
            await self._conn.execute_fetchall(
                SQLITE_CAS, (next_payload(payload), object_id, version)
            )
        )
        if not written:
            raise FloorConflict(object_id)
        return int(written[0][0])

    async def settings(self) -> dict[str, str]:
        found = {}
        for pragma in ("journal_mode", "synchronous", "busy_timeout"):
            rows = list(await self._conn.execute_fetchall(f"PRAGMA {pragma}"))
            found[pragma] = str(rows[0][0])
        synchronous = {"0": "OFF", "1": "NORMAL", "2": "FULL", "3": "EXTRA"}
        found["synchronous"] = synchronous.get(found["synchronous"], found["synchronous"])
        return found

    async def engine_version(self) -> str:
        rows = list(await self._conn.execute_fetchall("SELECT sqlite_version()"))
        return str(rows[0][0])

    async def close(self) -> None:
        await self._conn.close()


class PostgresFloor(Floor):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, dsn: str) -> PostgresFloor:
        return cls(await asyncpg.create_pool(dsn, min_size=1, max_size=10))

    async def update(self, object_id: str) -> int:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(PG_SELECT, object_id)
            version = await conn.fetchval(PG_CAS, next_payload(row[0]), object_id, row[1])
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
        async with self._pool.acquire() as conn:
            return {name: str(await conn.fetchval(f"SHOW {name}")) for name in names}

    async def engine_version(self) -> str:
        async with self._pool.acquire() as conn:
            return str(await conn.fetchval("SHOW server_version"))

    async def close(self) -> None:
        await self._pool.close()


def sqlite_path(url: str) -> str:
    """The file a ``sqlite:///`` URL names (the same rule as shellgate.store.connect)."""
    return urlsplit(url).path[1:]


async def open_floor(url: str) -> Floor:
    if url.startswith("sqlite:"):
        return await SqliteFloor.open(sqlite_path(url))
    return await PostgresFloor.open(url)
