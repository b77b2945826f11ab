"""The SQLite backend: the embedded default, for one gateway process.

One connection per store, in WAL mode with a busy timeout, so other processes on the same
file (a CLI ``migrate``, a test) wait for the write lock instead of failing. Every write is a
single autocommitted statement; the CAS guard is the statement's ``WHERE resource_version = ?``
and the new version comes from its ``RETURNING`` clause, never from a second read.

Durability: ``synchronous=FULL`` by default, so a write that returned survives both a process
kill and a power loss. ``?synchronous=NORMAL`` in the URL trades the last commits on power loss
(never on a process kill) for speed. The database file and its ``-wal``/``-shm`` sidecars are
created with mode 0600.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Sequence
from typing import Any, ClassVar

import aiosqlite

from shellgate.store import migrations
from shellgate.store.base import RetryPolicy, Store, timed
from shellgate.store.errors import (
    ConfigurationError,
    Conflict,
    MigrationError,
    NotFound,
    StoreError,
    StoreUnavailable,
    UniqueViolation,
)
from shellgate.store.observer import StoreObserver
from shellgate.store.paging import clamp_page_size, decode_page_token, page_of
from shellgate.store.records import (
    DEFAULT_WORKSPACE,
    ChangeEvent,
    ObjectRecord,
    Page,
    WriteCondition,
    WriteResult,
)
from shellgate.store.selectors import parse_selector
from shellgate.store.sql import COLUMNS, SelectorCompiler

log = logging.getLogger(__name__)

NOW_MS = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER)"
POLL_INTERVAL = 0.2
SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")

# SQLite names no index in its unique-violation message, only the columns; map those to
# the index names Postgres reports, so callers see the same constraint on both backends.
_UNIQUE_COLUMNS = {
    "objects.object_type, objects.scope, objects.version": "objects_version_uq",
    "objects.object_type, objects.scope, objects.dedup_key": "objects_dedup_uq",
    "objects.object_type, objects.workspace, objects.name": "objects_name_uq",
    "objects.object_type, objects.name": "objects_name_uq",
    "objects.id": "objects_pkey",
}


class SqliteStore(Store):
    backend: ClassVar[str] = "sqlite"

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        observer: StoreObserver | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(observer=observer, retry=retry)
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ConfigurationError(
                f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, got {synchronous!r}"
            )
        self.path = path
        self._synchronous = synchronous.upper()
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: aiosqlite.Connection | None = None
        self._selectors = SelectorCompiler("sqlite", lambda _n: "?")
        self._poller: asyncio.Task[None] | None = None

    @property
    def supports_multiple_replicas(self) -> bool:
        return False

    @property
    def in_memory(self) -> bool:
        return self.path == ":memory:"

    # ----- lifecycle ----------------------------------------------------------------------

    async def open(self, *, migrate_to: int | None = None) -> None:
        """Open the database, apply migrations (up to ``migrate_to`` when given)."""
        if not self.in_memory:
            _create_private_file(self.path)
        try:
            self._conn = await aiosqlite.connect(self.path, isolation_level=None)
            await self._conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            if not self.in_memory:
                await self._conn.execute("PRAGMA journal_mode = WAL")
            await self._conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        await self._migrate(migrate_to)
        if not self.in_memory:
            _tighten_permissions(self.path)

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def _migrate(self, migrate_to: int | None) -> None:
        conn = self._db
        await conn.execute("BEGIN IMMEDIATE")
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at_ms INTEGER NOT NULL)"
            )
            rows = await conn.execute_fetchall("SELECT version FROM schema_migrations")
            applied = {row[0] for row in rows}
            for migration in migrations.load("sqlite"):
                if migration.version in applied:
                    continue
                if migrate_to is not None and migration.version > migrate_to:
                    break
                for statement in migration.statements():
                    await conn.execute(statement)
                await conn.execute(
                    f"INSERT INTO schema_migrations VALUES (?, ?, {NOW_MS})",
                    (migration.version, migration.name),
                )
                log.info("applied sqlite migration %03d_%s", migration.version, migration.name)
            await conn.execute("COMMIT")
        except sqlite3.Error as exc:
            await conn.execute("ROLLBACK")
            raise MigrationError(f"sqlite migration failed: {exc}") from exc

    @property
    def _db(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreUnavailable("the SQLite store is not open")
        return self._conn

    async def schema_version(self) -> int:
        rows = await self._db.execute_fetchall("SELECT MAX(version) FROM schema_migrations")
        return int(next(iter(rows))[0] or 0)

    async def ping(self) -> None:
        try:
            await self._db.execute_fetchall("SELECT 1")
        except (sqlite3.Error, ValueError) as exc:
            raise StoreUnavailable(f"SQLite database {self.path!r} unavailable: {exc}") from exc

    # ----- primitives ---------------------------------------------------------------------

    @timed("put_if")
    async def put_if(
        self,
        object_type: str,
        id: str,
        name: str | None,
        payload: bytes,
        labels: dict[str, str] | None,
        condition: WriteCondition,
        workspace: str = DEFAULT_WORKSPACE,
        *,
        scope: str | None = None,
        version: int | None = None,
        status: str | None = None,
    ) -> WriteResult:
        labels_json = _labels_json(labels, keep=not condition.is_create)
        if condition.is_create:
            sql = (
                "INSERT INTO objects (object_type, id, name, workspace, payload, labels, "
                "resource_version, created_at_ms, updated_at_ms, scope, version, status) "
                f"VALUES (?, ?, ?, ?, ?, ?, 1, {NOW_MS}, {NOW_MS}, ?, ?, ?) "
                "RETURNING resource_version, created_at_ms, updated_at_ms"
            )
            params: tuple[Any, ...] = (
                object_type,
                id,
                name,
                workspace,
                payload,
                labels_json,
                scope,
                version,
                status,
            )
        else:
            sql = (
                "UPDATE objects SET payload = ?, labels = COALESCE(?, labels), "
                "status = COALESCE(?, status), "
                f"resource_version = resource_version + 1, updated_at_ms = {NOW_MS} "
                "WHERE object_type = ? AND id = ? AND resource_version = ? "
                "RETURNING resource_version, created_at_ms, updated_at_ms"
            )
            params = (payload, labels_json, status, object_type, id, condition.expected_version)
        rows = await self._execute(sql, params)
        if rows:
            rv, created, updated = rows[0]
            self._publish(object_type, id, rv, updated)
            return WriteResult(rv, created, updated)
        raise await self._why_not_written(object_type, id)

    @timed("delete_if")
    async def delete_if(self, object_type: str, id: str, expected_resource_version: int) -> bool:
        rows = await self._execute(
            "DELETE FROM objects WHERE object_type = ? AND id = ? AND resource_version = ? "
            "RETURNING id",
            (object_type, id, expected_resource_version),
        )
        if rows:
            self._hub.publish(ChangeEvent(object_type, id, None, deleted=True))
            return True
        error = await self._why_not_written(object_type, id)
        if isinstance(error, NotFound):
            return False
        raise error

    @timed("get")
    async def get(self, object_type: str, id: str) -> ObjectRecord | None:
        rows = await self._execute(
            f"SELECT {COLUMNS} FROM objects WHERE object_type = ? AND id = ?", (object_type, id)
        )
        return _record(rows[0]) if rows else None

    @timed("get_by_name")
    async def get_by_name(
        self, object_type: str, name: str, workspace: str = DEFAULT_WORKSPACE
    ) -> ObjectRecord | None:
        rows = await self._execute(
            f"SELECT {COLUMNS} FROM objects WHERE object_type = ? AND workspace = ? AND name = ?",
            (object_type, workspace, name),
        )
        return _record(rows[0]) if rows else None

    @timed("list")
    async def list(
        self,
        object_type: str,
        *,
        workspace: str | None = DEFAULT_WORKSPACE,
        selector: str = "",
        limit: int = 0,
        page_token: str = "",
        scope: str | None = None,
    ) -> Page:
        size = clamp_page_size(limit)
        params: list[Any] = [object_type]
        where = ["object_type = ?"]
        if workspace is not None:
            where.append("workspace = ?")
            params.append(workspace)
        if scope is not None:
            where.append("scope = ?")
            params.append(scope)
        where += self._selectors.compile(parse_selector(selector), params)
        if page_token:
            created, last_id = decode_page_token(page_token)
            where.append("(created_at_ms, id) > (?, ?)")
            params += [created, last_id]
        params.append(size + 1)
        rows = await self._execute(
            f"SELECT {COLUMNS} FROM objects WHERE {' AND '.join(where)} "
            "ORDER BY created_at_ms, id LIMIT ?",
            tuple(params),
        )
        return page_of([_record(row) for row in rows], size)

    @timed("list_versions")
    async def list_versions(
        self,
        object_type: str,
        scope: str,
        *,
        below: int | None = None,
        statuses: Sequence[str] | None = None,
        limit: int = 0,
    ) -> Sequence[ObjectRecord]:
        params: list[Any] = [object_type, scope]
        where = ["object_type = ?", "scope = ?", "version IS NOT NULL"]
        if below is not None:
            where.append("version < ?")
            params.append(below)
        if statuses is not None:
            where.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params += list(statuses)
        params.append(clamp_page_size(limit))
        rows = await self._execute(
            f"SELECT {COLUMNS} FROM objects WHERE {' AND '.join(where)} "
            "ORDER BY version DESC LIMIT ?",
            tuple(params),
        )
        return [_record(row) for row in rows]

    # ----- helpers ------------------------------------------------------------------------

    async def _execute(self, sql: str, params: tuple[Any, ...]) -> Sequence[Any]:
        try:
            return list(await self._db.execute_fetchall(sql, params))
        except sqlite3.IntegrityError as exc:
            raise _unique_violation(exc) from exc
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"SQLite error: {exc}") from exc

    async def _why_not_written(self, object_type: str, id: str) -> Conflict | NotFound:
        rows = await self._execute(
            "SELECT resource_version FROM objects WHERE object_type = ? AND id = ?",
            (object_type, id),
        )
        return Conflict(rows[0][0]) if rows else NotFound(object_type, id)

    def _publish(self, object_type: str, id: str, rv: int, updated_at_ms: int) -> None:
        self._hub.publish(ChangeEvent(object_type, id, rv, committed_at_ms=updated_at_ms))

    async def _start_change_source(self) -> None:
        """Local writes publish directly; writes by other processes show up in data_version."""
        if not self.in_memory:
            self._poller = asyncio.create_task(self._poll_other_processes())

    async def _poll_other_processes(self) -> None:
        # data_version, read on the store's own connection, changes only when *another*
        # connection commits: this costs one pragma per interval and wakes watchers only for
        # foreign writes (local writes already published a precise hint).
        last = None
        while True:
            try:
                rows = await self._db.execute_fetchall("PRAGMA data_version")
                current = next(iter(rows))[0]
            except (sqlite3.Error, StoreUnavailable) as exc:
                log.warning("sqlite change poll failed: %s", exc)
                current = last
            if last is not None and current != last:
                self._hub.publish(ChangeEvent(None, None))
            last = current
            await asyncio.sleep(POLL_INTERVAL)


def _labels_json(labels: dict[str, str] | None, *, keep: bool) -> str | None:
    """The labels column value; None on an update means "keep the stored labels"."""
    if labels is None and keep:
        return None
    return json.dumps(labels or {}, sort_keys=True, separators=(",", ":"))


def _record(row: Any) -> ObjectRecord:
    return ObjectRecord(
        object_type=row[0],
        id=row[1],
        name=row[2],
        workspace=row[3],
        payload=bytes(row[4]),
        labels=json.loads(row[5]) if row[5] else {},
        resource_version=max(int(row[6]), 1),
        created_at_ms=row[7],
        updated_at_ms=row[8],
        scope=row[9],
        version=row[10],
        status=row[11],
    )


def _unique_violation(exc: sqlite3.IntegrityError) -> Exception:
    text = str(exc)
    prefix = "UNIQUE constraint failed: "
    if not text.startswith(prefix):
        return StoreError(f"SQLite integrity error: {text}")
    return UniqueViolation(_UNIQUE_COLUMNS.get(text.removeprefix(prefix)), text)


def _create_private_file(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)


def _tighten_permissions(path: str) -> None:
    for candidate in (path, f"{path}-wal", f"{path}-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(candidate, 0o600)
