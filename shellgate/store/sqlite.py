"""The SQLite backend: the embedded default, for one gateway process.

A writer connection per store, in WAL mode with a busy timeout, so other processes on the
same file (a CLI ``migrate``, a test) wait for the write lock instead of failing, and a
read-only connection for reads by key. Cheap statements run on the event loop; those that
may wait or scan run on one database thread (see the executor below for the rule). The
statements are the SQL core's (sql.py); this module holds only what is SQLite's own: its
dialect, the connections and where statements run, and the change feed.

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
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Unpack

from shellgate.store import migrations
from shellgate.store.base import M, Mutation, StoreOptions, observed
from shellgate.store.db_thread import DatabaseThread, FileUsers
from shellgate.store.deadline import remaining_seconds
from shellgate.store.errors import (
    ConfigurationError,
    StoreError,
    StoreUnavailable,
    UniqueViolation,
)
from shellgate.store.records import ChangeEvent
from shellgate.store.sql import CasWrite, Dialect, Params, SqlStore

log = logging.getLogger(__name__)

# The label rows of the object at hand: the columns after the key (and value) in every
# label index, so a probe is one index seek.
_PROBE = (
    "probe.object_type = objects.object_type AND probe.created_at_ms = objects.created_at_ms "
    "AND probe.object_id = objects.id"
)

POLL_INTERVAL = 0.2
DEFAULT_LOCK_WAIT_MS = 1000
DEADLINE_MARGIN_S = 0.05
TURN_SLACK_MS = 100
WAL_SWITCH_PAUSE = 0.01
SYNCHRONOUS_MODES = ("FULL", "NORMAL", "EXTRA")
INLINE_WRITE_LIMIT_S = 0.004
WRITE_COST_WEIGHT = 0.2
SHARED_LOCK_SECONDS = 1.0
_LOCK_ERRORS = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)

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
    # SQLite never reorders a CROSS JOIN: the label walk stays the outer loop.
    label_join: ClassVar[str] = "CROSS JOIN objects ON objects.id = walk.object_id"

    def placeholder(self, position: int) -> str:
        return "?"

    # The object_labels table (migrations 005 and 007, kept by triggers) holds one row per
    # label with the list order of its object. A requirement tested on one object is an
    # index probe by (key, [value,] object_type, created_at_ms, id), never a decode of the
    # labels column, and never a set of every matching id built first.
    def has_label_key(self, key: str) -> str:
        return f"EXISTS (SELECT 1 FROM object_labels AS probe WHERE probe.key = {key} AND {_PROBE})"

    def label_value_in(self, key: str, values: list[str]) -> str:
        return (
            "EXISTS (SELECT 1 FROM object_labels AS probe WHERE probe.key = "
            f"{key} AND probe.value IN ({', '.join(values)}) AND {_PROBE})"
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

    inline_write_limit_s: ClassVar[float] = INLINE_WRITE_LIMIT_S
    """Writes run on the event loop while their recent average stays under this (seconds)."""

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
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._db_thread: DatabaseThread | None = None
        self._write_cost_s = 0.0
        self._shared_until = 0.0  # until then another process was seen writing
        self._users: FileUsers | None = None
        self._cas_read_sql = self._sql.cas_read.sql

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
        self._db_thread = DatabaseThread("shellgate-sqlite")
        try:
            self._writer = await self._db_thread.run(self._connect_writer)
            if not self.in_memory:
                await self._enter_wal_mode()
            await self._on_thread(f"PRAGMA synchronous = {self._synchronous}")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        await self._migrate(migrate_to)
        if not self.in_memory:
            try:
                self._reader = self._connect_reader()
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"cannot open SQLite database {self.path!r}: {exc}") from exc
            _tighten_permissions(self.path)
            self._users = FileUsers(f"{self.path}-users")
        self._opened = True

    def _connect_writer(self) -> sqlite3.Connection:
        # Used by the database thread and by the event loop, never by both at once (the turn).
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        """A second connection for reads by key on the event loop.

        WAL lets it read while the writer commits, and it never waits for a lock (a busy
        timeout of 0: a read that meets one is handed to the thread instead). ``query_only``
        makes sure nothing ever writes through it.
        """
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 0")
        conn.execute("PRAGMA query_only = ON")
        return conn

    async def _on_thread(self, sql: str) -> None:
        writer = self._db
        await self._thread.run(lambda: writer.execute(sql).fetchall())

    async def _enter_wal_mode(self) -> None:
        """Switch to WAL, waiting out other processes that are opening the file too.

        Changing the journal mode needs an exclusive lock, and SQLite answers "database is
        locked" at once, without its busy handler, while another connection holds it (two
        replicas or a ``migrate`` starting together). So this waits, in short steps, up to
        the busy timeout the other statements get.
        """
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                await self._on_thread("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(WAL_SWITCH_PAUSE)

    async def _disconnect(self) -> None:
        if self._db_thread is not None:
            async with self._turn:  # a call still running on the thread finishes first
                await self._db_thread.stop()
            self._db_thread = None
        for conn in (self._reader, self._writer):
            if conn is not None:
                conn.close()
        self._reader = self._writer = None
        if self._users is not None:
            self._users.close()
            self._users = None
        self._opened = False

    @property
    def _db(self) -> sqlite3.Connection:
        if self._writer is None:
            raise StoreUnavailable("the SQLite store is not open")
        return self._writer

    @property
    def _thread(self) -> DatabaseThread:
        if self._db_thread is None:
            raise StoreUnavailable("the SQLite store is not open")
        return self._db_thread

    # ----- executor -----------------------------------------------------------------------
    #
    # Where a statement runs is chosen by what it costs. A thread hop (hand the call to the
    # database thread, wake the event loop when it is done) costs about as much as a whole
    # durable commit on a fast disk, so:
    #
    # * a read by key runs on the event loop: microseconds, and WAL never makes it wait for
    #   a writer (on the writer connection while it is free, else on the reader);
    # * a write runs on the event loop too, with no busy wait, while the recent commits took
    #   less than ``inline_write_limit_s`` on average (the loop then stalls for at most about
    #   that long per write, less than the hops it saves) and this process is the only one
    #   writing: no other shellgate store has the file open (``FileUsers``) and no other
    #   process was found holding the lock in the last ``SHARED_LOCK_SECONDS``. A process
    #   writing back to back on the event loop leaves others hardly a gap to take the lock
    #   in; a write handed to the thread leaves one per hop, as SQLite's busy handler needs;
    # * everything else runs on the database thread, where waiting does not stop the event
    #   loop: slow commits (a network disk), writes while another process writes too (SQLite's
    #   busy handler waits for the lock), pages and aggregates (a scan may be long), and
    #   opening and migrating.
    #
    # Statements on the writer connection run one at a time: the thread's take the turn,
    # and the event loop's run only while nobody holds it. The thread waits for the lock no
    # longer than the bound (``_wait_bound_ms``).

    async def _rows(self, sql: str, params: Sequence[Any], *, read: bool = False) -> Sequence[Any]:
        if read:  # a page or an aggregate: its scan may be long, so it runs on the thread
            lock_ms = await self._take_turn()
            return await self._on_thread_holding_turn(sql, params, lock_ms)
        return await self._write(sql, params)

    async def _row(self, sql: str, params: Sequence[Any], *, read: bool = False) -> Any:
        if read:  # every single-row read is by key or unique index
            rows = self._read_inline(sql, params)
            if rows is None:
                lock_ms = await self._take_turn()
                rows = await self._on_thread_holding_turn(sql, params, lock_ms)
        else:
            rows = await self._write(sql, params)
        return rows[0] if rows else None

    async def _execute(self, sql: str) -> None:
        lock_ms = await self._take_turn()
        await self._on_thread_holding_turn(sql, (), lock_ms)

    async def _write(self, sql: str, params: Sequence[Any]) -> list[Any]:
        if self._writes_inline() and not self._turn.locked():
            # Nothing runs on the thread, and nothing else can start before this returns
            # (no await in between): the connection is free throughout.
            rows = self._write_inline(sql, params)
            if rows is not None:
                return rows
            # Another process holds the lock: wait for it on the thread, by SQLite's busy
            # handler, and leave the lock gaps for a while (see the executor's comment).
            self._shared_until = time.monotonic() + SHARED_LOCK_SECONDS
        lock_ms = await self._take_turn()
        measure = self._opened and self._write_cost_s >= self.inline_write_limit_s
        return await self._on_thread_holding_turn(sql, params, lock_ms, measure=measure)

    async def _cas_attempt(
        self,
        message_type: type[M],
        object_type: str,
        id: str,
        mutate: Mutation[M],
        expected_version: int,
        status: Callable[[M], str | None] | None = None,
    ) -> tuple[M, bool]:
        """A whole CAS attempt on the event loop, without suspending, while writes run there.

        The read, the decision (``_plan_cas``) and the write run back to back on the writer
        connection: no await between them, so the connection stays free throughout and the
        attempt costs no event-loop turn. The CAS predicate still decides the write. When
        writes do not run inline, or the read meets a lock, the core's attempt runs instead;
        when the write finds another process holding the lock, it waits on the thread.

        Deliberately flat (the write is ``_cas_write_now``, which the first try from a
        remembered row shares): measured as the process's CPU time per update on a file,
        every Python call on this path costs about four times what it costs in a warm loop,
        as the commit's fsync leaves the CPU's caches cold (calls worth 3 us in a loop on
        ``:memory:`` cost 12 us per update on a file).
        """
        if not self._writes_inline() or self._turn.locked():
            return await super()._cas_attempt(
                message_type, object_type, id, mutate, expected_version, status
            )
        started = time.perf_counter()
        try:
            rows = self._db.execute(self._cas_read_sql, (object_type, id)).fetchall()
        except sqlite3.Error as exc:
            if _waits_for_a_lock(exc):  # WAL recovery by another process: wait on the thread
                return await super()._cas_attempt(
                    message_type, object_type, id, mutate, expected_version, status
                )
            raise self._reported("get", started, exc) from exc
        self.observer.operation(self.backend, "get", time.perf_counter() - started, True)
        candidate, write = self._plan_cas(
            message_type,
            object_type,
            id,
            rows[0] if rows else None,
            mutate,
            expected_version,
            status,
        )
        if write is None:
            return candidate, False
        written = self._cas_write_now(write)
        if written is None:  # another process holds the lock: wait for it on the thread
            version = await observed(self, "put_if", self._write_at_version(write))
            return self._written(candidate, write, version), True
        found = self._cas_written(write, written[0] if written else None)
        if found is None:
            raise await self._why_not_written(object_type, id)
        return self._written(candidate, write, found), True

    async def _cas_write_once(self, write: CasWrite) -> int | None:
        """The CAS update alone, on the event loop when writes run there."""
        if not self._writes_inline() or self._turn.locked():
            return await super()._cas_write_once(write)
        rows = self._cas_write_now(write)
        if rows is None:
            return await super()._cas_write_once(write)
        return self._cas_written(write, rows[0] if rows else None)

    def _cas_write_now(self, write: CasWrite) -> list[Any] | None:
        """The CAS update on the event loop, the writer connection being free; its rows, or
        None when another process holds the lock (the caller then waits on the thread, and
        writes leave the lock gaps for a while: see the executor's comment)."""
        if self._pragma_busy_ms:
            self._set_busy_timeout(0)
        started = time.perf_counter()
        try:
            rows = self._db.execute(write.sql, write.params).fetchall()
        except sqlite3.Error as exc:
            if not _waits_for_a_lock(exc):
                raise self._reported("put_if", started, exc) from exc
            self._shared_until = time.monotonic() + SHARED_LOCK_SECONDS
            return None
        seconds = time.perf_counter() - started
        self._note_write_cost(seconds)
        self.observer.operation(self.backend, "put_if", seconds, True)
        return rows

    def _reported(self, operation: str, started: float, exc: sqlite3.Error) -> StoreError:
        """The store's error for ``exc``, reported as ``observed`` reports a failure."""
        error = self.dialect.translate(exc)
        available = not isinstance(error, StoreUnavailable)
        seconds = time.perf_counter() - started
        self.observer.operation(self.backend, operation, seconds, available)
        return error

    def _writes_inline(self) -> bool:
        """Whether writes run on the event loop now (see the executor's comment)."""
        if not self._opened or self._write_cost_s >= self.inline_write_limit_s:
            return False
        now = time.monotonic()
        if now < self._shared_until:
            return False
        if self._users is not None and not self._users.alone(now):
            self._shared_until = now + SHARED_LOCK_SECONDS
            return False
        return True

    def _read_inline(self, sql: str, params: Sequence[Any]) -> list[Any] | None:
        """The rows, or None when the read must wait for a lock (then it goes to the thread).

        The writer connection serves it while the turn is free: its page cache is current,
        as it made the last writes itself. Otherwise the reader connection does, which WAL
        lets read while the writer is busy on the thread.
        """
        if self._opened and not self._turn.locked():
            conn = self._db
        elif self._reader is not None:
            conn = self._reader
        else:  # in memory: the writer is the only connection, and it is busy
            return None
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            if _waits_for_a_lock(exc):
                return None
            raise self.dialect.translate(exc) from exc

    def _write_inline(self, sql: str, params: Sequence[Any]) -> list[Any] | None:
        """Run a write on the event loop without waiting for the lock; None when it is held
        elsewhere (an autocommit statement refused for a lock wrote nothing)."""
        conn = self._db
        self._set_busy_timeout(0)
        started = time.perf_counter()
        try:
            rows = conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            if _waits_for_a_lock(exc):
                return None
            raise self.dialect.translate(exc) from exc
        self._note_write_cost(time.perf_counter() - started)
        return rows

    async def _on_thread_holding_turn(
        self, sql: str, params: Sequence[Any], lock_ms: int, *, measure: bool = False
    ) -> list[Any]:
        """Run one statement on the database thread; the caller holds the turn.

        The turn passes on only once the thread has finished the statement, even when the
        caller is cancelled meanwhile: until then the connection is not free.
        """
        conn = self._db

        def run() -> tuple[list[Any], float]:
            self._set_busy_timeout(lock_ms)
            started = time.perf_counter()
            rows = conn.execute(sql, params).fetchall()
            return rows, time.perf_counter() - started

        future = self._thread.run(run)
        try:
            rows, seconds = await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done():
                self._turn.release()
            else:
                future.add_done_callback(self._pass_turn_on)
            raise
        except sqlite3.Error as exc:
            self._turn.release()
            raise self.dialect.translate(exc) from exc
        except BaseException:
            self._turn.release()
            raise
        self._turn.release()
        if measure:
            self._note_write_cost(seconds)
        return rows

    def _pass_turn_on(self, future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            future.exception()  # retrieved: nobody awaits it any more
        self._turn.release()

    def _note_write_cost(self, seconds: float) -> None:
        """A moving average of recent writes, which decides where the next one runs."""
        self._write_cost_s += WRITE_COST_WEIGHT * (seconds - self._write_cost_s)

    def _wait_bound_ms(self) -> int:
        """How long a call may wait for the connection and the lock, in milliseconds.

        While another process holds the database lock, each statement waits, and every call
        queued behind it waited too: ten seconds for a client whose write could never
        succeed meanwhile. So a call waits no longer than the bound (``lock_wait_ms`` once
        open, ``busy_timeout_ms`` while opening and migrating) or the caller's deadline,
        whichever comes first; then it fails with ``StoreUnavailable`` (UNAVAILABLE with a
        RetryInfo), which the client can retry.
        """
        wait_ms = self._lock_wait_ms if self._opened else self._busy_timeout_ms
        remaining = remaining_seconds()
        if remaining is not None:  # answer before the client gives up, so it sees why
            wait_ms = min(wait_ms, max(0, int((remaining - DEADLINE_MARGIN_S) * 1000)))
        return wait_ms

    async def _take_turn(self, wait_ms: int | None = None) -> int:
        """Take the writer connection within the wait bound; returns the lock wait left (ms).

        A call waits for its turn here, where giving up leaves nothing queued, and then for
        the lock no longer than what is left of the same bound.
        """
        if wait_ms is None:
            wait_ms = self._wait_bound_ms()
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
        # One budget for both waits: what the turn took, the lock wait cannot have. A short
        # wait for the turn (ordinary load) is not charged: changing the pragma costs a
        # statement, and the bound may be overrun by at most that slack.
        waited_ms = int((time.monotonic() - started) * 1000)
        return wait_ms if waited_ms < TURN_SLACK_MS else max(0, wait_ms - waited_ms)

    def _set_busy_timeout(self, wait_ms: int) -> None:
        """Called by the holder of the turn only, on whichever thread runs its statement."""
        if wait_ms != self._pragma_busy_ms:
            self._db.execute(f"PRAGMA busy_timeout = {int(wait_ms)}")
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
                async with self._turn:  # the writer connection, while nothing else uses it
                    current = self._db.execute("PRAGMA data_version").fetchall()[0][0]
            except (sqlite3.Error, StoreUnavailable) as exc:
                log.warning("sqlite change poll failed: %s", exc)
                current = last
            if last is not None and current != last:
                self._heard(ChangeEvent(None, None))
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
    for candidate in (path, f"{path}-wal", f"{path}-shm", f"{path}-users"):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(candidate, 0o600)


def _waits_for_a_lock(error: sqlite3.Error) -> bool:
    """True for "database is busy/locked": the statement did nothing and may run again."""
    return (getattr(error, "sqlite_errorcode", 0) & 0xFF) in _LOCK_ERRORS
