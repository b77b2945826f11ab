"""The SQLite backend: the embedded default, for one gateway process.

One connection per store, in WAL mode with a busy timeout, so other processes on the same
file (a CLI ``migrate``, a test) wait for the write lock instead of failing. The statements
are the SQL core's (sql.py); this module holds only what is SQLite's own: its dialect, the
connection, and the change feed.

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
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar, Unpack

import aiosqlite

from shellgate.store import migrations
from shellgate.store.base import StoreOptions
from shellgate.store.deadline import remaining_seconds
from shellgate.store.errors import (
    ConfigurationError,
    StoreError,
    StoreUnavailable,
    UniqueViolation,
)
from shellgate.store.records import ChangeEvent
from shellgate.store.sql import Dialect, Params, SqlStore

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.2
DEFAULT_LOCK_WAIT_MS = 1000
DEADLINE_MARGIN_S = 0.05
TURN_SLACK_MS = 100
WAL_SWITCH_PAUSE = 0.01
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


class SqliteDialect(Dialect):
    """Labels are JSON text, mirrored into the indexed ``object_labels`` table for selectors;
    parameters are ``?``."""

    name: ClassVar[str] = "sqlite"
    # No database notification exists: local writes are published by the writer itself.
    publishes_own_writes: ClassVar[bool] = True
    now_ms: ClassVar[str] = "CAST(ROUND((julianday('now') - 2440587.5) * 86400000) AS INTEGER)"
    # BEGIN IMMEDIATE takes the write lock at once: a second process waits (busy timeout)
    # and then sees the migrations the first one applied.
    begin_migrations: ClassVar[tuple[str, ...]] = ("BEGIN IMMEDIATE",)
    applied_at_ddl: ClassVar[str] = "applied_at_ms INTEGER NOT NULL"
    applied_at: ClassVar[tuple[str, str]] = ("applied_at_ms", now_ms)

    def placeholder(self, position: int) -> str:
        return "?"

    # The object_labels table (migration 005, kept by triggers) answers both from its
    # (key, value) index instead of decoding every row's labels.
    def has_label_key(self, key: str) -> str:
        return f"objects.id IN (SELECT object_id FROM object_labels WHERE key = {key})"

    def label_value_in(self, key: str, values: list[str]) -> str:
        return (
            "objects.id IN (SELECT object_id FROM object_labels "
            f"WHERE key = {key} AND value IN ({', '.join(values)}))"
        )

    def one_of(self, column: str, values: Sequence[str], params: Params) -> str:
        return f"{column} IN ({', '.join(params.bind(value) for value in values)})"

    def labels_of(self, stored: Any) -> dict[str, str]:
        return json.loads(stored) if stored else {}

    def translate(self, error: Exception) -> StoreError:
        if isinstance(error, sqlite3.IntegrityError):
            return _unique_violation(error)
        if isinstance(error, sqlite3.OperationalError):
            return StoreUnavailable(f"SQLite error: {error}")
        return StoreError(f"SQLite error: {error}")

    def migration_statements(self, migration: migrations.Migration) -> list[str]:
        # sqlite3 runs one statement per call.
        return migration.statements()


class SqliteStore(SqlStore):
    dialect: ClassVar[Dialect] = SqliteDialect()

    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        busy_timeout_ms: int = 5000,
        lock_wait_ms: int = DEFAULT_LOCK_WAIT_MS,
        **options: Unpack[StoreOptions],
    ) -> None:
        super().__init__(**options)
        if synchronous.upper() not in SYNCHRONOUS_MODES:
            raise ConfigurationError(
                f"synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, got {synchronous!r}"
            )
        self.path = path
        self._synchronous = synchronous.upper()
        self._busy_timeout_ms = busy_timeout_ms
        self._lock_wait_ms = lock_wait_ms
        self._pragma_busy_ms = busy_timeout_ms
        self._turn = asyncio.Lock()
        self._opened = False
        self._conn: aiosqlite.Connection | None = None

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
            try:
                _create_private_file(self.path)
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot create SQLite database {self.path!r}: {exc.strerror or exc}"
                ) from None
        try:
            self._conn = await aiosqlite.connect(self.path, isolation_level=None)
            await self._conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            if not self.in_memory:
                await self._enter_wal_mode()
            await self._conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        await self._migrate(migrate_to)
        self._opened = True
        if not self.in_memory:
            _tighten_permissions(self.path)

    async def _enter_wal_mode(self) -> None:
        """Switch to WAL, waiting out other processes that are opening the file too.

        Changing the journal mode needs an exclusive lock, and SQLite answers "database is
        locked" at once, without its busy handler, while another connection holds it (two
        replicas or a ``migrate`` starting together). So this waits, in short steps, up to
        the busy timeout the other statements get.
        """
        assert self._conn is not None
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                await self._conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(WAL_SWITCH_PAUSE)

    async def _disconnect(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    @property
    def _db(self) -> aiosqlite.Connection:
        if self._conn is None:
            raise StoreUnavailable("the SQLite store is not open")
        return self._conn

    # ----- executor -----------------------------------------------------------------------

    async def _rows(self, sql: str, params: Sequence[Any], *, read: bool = False) -> Sequence[Any]:
        async with self._statement_turn():
            try:
                return list(await self._db.execute_fetchall(sql, params))
            except sqlite3.Error as exc:
                raise self.dialect.translate(exc) from exc

    async def _execute(self, sql: str) -> None:
        async with self._statement_turn():
            try:
                await self._db.execute(sql)
            except sqlite3.Error as exc:
                raise self.dialect.translate(exc) from exc

    @contextlib.asynccontextmanager
    async def _statement_turn(self) -> AsyncIterator[None]:
        """Run one statement within a bounded wait for the database lock.

        The one connection runs statements one after another. While another process holds
        the lock, each statement waits in SQLite's busy handler, and every call queued behind
        it waited too: ten seconds for a client whose write could never succeed meanwhile.
        So a call waits for its turn on the connection here, where giving up leaves nothing
        queued, and then for the lock no longer than the wait bound (``lock_wait_ms`` once
        open, ``busy_timeout_ms`` while opening and migrating) or the caller's deadline,
        whichever comes first; then it fails with ``StoreUnavailable`` (UNAVAILABLE with a
        RetryInfo), which the client can retry.
        """
        wait_ms = self._lock_wait_ms if self._opened else self._busy_timeout_ms
        remaining = remaining_seconds()
        if remaining is not None:  # answer before the client gives up, so it sees why
            wait_ms = min(wait_ms, max(0, int((remaining - DEADLINE_MARGIN_S) * 1000)))
        started = time.monotonic()
        try:
            if self._turn.locked():
                await asyncio.wait_for(self._turn.acquire(), wait_ms / 1000)
            else:
                await self._turn.acquire()  # free: taken without suspending, no timer needed
        except TimeoutError:
            raise StoreUnavailable(
                f"the SQLite database is busy: no turn on the connection within {wait_ms} ms"
            ) from None
        try:  # one budget for both waits: what the turn took, the lock wait cannot have
            waited_ms = int((time.monotonic() - started) * 1000)
            # A short wait for the turn (ordinary load) is not charged: changing the pragma
            # costs a statement, and the bound may be overrun by at most that slack.
            lock_ms = wait_ms if waited_ms < TURN_SLACK_MS else max(0, wait_ms - waited_ms)
            await self._set_busy_timeout(lock_ms)
            yield
        finally:
            self._turn.release()

    async def _set_busy_timeout(self, wait_ms: int) -> None:
        if wait_ms != self._pragma_busy_ms:
            await self._db.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")
            self._pragma_busy_ms = wait_ms

    # ----- change feed --------------------------------------------------------------------

    async def _start_change_source(self) -> None:
        """Local writes publish directly; writes by other processes show up in data_version."""
        if not self.in_memory:
            self._feed_task = asyncio.create_task(self._poll_other_processes())

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


def _unique_violation(exc: sqlite3.IntegrityError) -> StoreError:
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
