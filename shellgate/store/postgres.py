"""The Postgres backend: for several gateway replicas sharing one database.

A small pool of asyncpg connections (pg_pool.py); asyncpg prepares and caches every
statement it runs, per connection, and the pool keeps its connections, so each statement is
parsed once per connection. The statements are the
SQL core's (sql.py); this module holds what is Postgres' own: its dialect (JSONB labels,
``$n`` parameters, arrays, the advisory migration lock, error translation by exception class
and constraint name), the pool with one connection pinned per CAS attempt, and the change
feed. Timestamps come from the database clock (``statement_timestamp()``, one value per
statement), so replicas with skewed clocks still agree on them.

The change feed is ``LISTEN shellgate_objects`` on a dedicated connection; every writing
statement sends one NOTIFY per row it changed (``PostgresDialect.announced``), delivered at
commit to every replica, the writer's own included.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, ClassVar, Unpack

import asyncpg

from shellgate.store.base import M, Mutation, StoreOptions
from shellgate.store.errors import (
    InvalidValue,
    StoreError,
    StoreUnavailable,
    UniqueViolation,
)
from shellgate.store.pg_pool import ConnectionPool
from shellgate.store.records import ChangeEvent, StoreTimeouts
from shellgate.store.sql import CasWrite, Dialect, Params, SqlStore

log = logging.getLogger(__name__)

# The connection pinned by the CAS attempt running in this task, if any.
_PINNED: contextvars.ContextVar[asyncpg.Connection | None] = contextvars.ContextVar(
    "shellgate_postgres_pinned", default=None
)

CHANNEL = "shellgate_objects"
MIGRATION_LOCK_KEY = 0x5348454C4C  # "SHELL": one advisory lock id for all shellgate schemas
LISTEN_RETRY_SECONDS = 1.0
LISTEN_READY_TIMEOUT = 5.0

DEFAULT_STATEMENT_TIMEOUT = StoreTimeouts().statement
DEFAULT_ACQUIRE_TIMEOUT = StoreTimeouts().acquire
CLIENT_TIMEOUT_SLACK = 5.0
"""The client gives up this long after the server's statement_timeout should have fired."""

# Connection-level failures: the database is down, unreachable, restarting, out of
# connections or too slow, not the request wrong. InternalClientError is what asyncpg raises
# on a pooled connection that already received the server's FATAL ("cannot switch to state
# 12"); QueryCanceledError is the server's statement_timeout.
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # credentials refused
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a demoted primary during a failover
    asyncpg.exceptions.TransactionRollbackError,  # serialization failure, deadlock
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)
# The connection itself is gone or unusable: it must not return to the pool, and a read may
# be tried once more on a fresh one. (A timeout or a cancelled statement leaves a healthy
# connection and is not retried: the database is slow, and a retry would add load.)
_CONNECTION_LOST = (
    OSError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
)
# A value the database (or asyncpg's encoder) refuses: the request is wrong, not the server.
# asyncpg's client-side DataError subclasses InterfaceError, so it is matched first.
_BAD_VALUE = (asyncpg.exceptions.DataError, asyncpg.exceptions._base.DataError)
_DRIVER_ERRORS = (asyncpg.PostgresError, *_UNAVAILABLE, *_BAD_VALUE)


class ConnectionLost(StoreUnavailable):
    """The connection dropped or broke (not a slow or refusing database)."""


def _terminate_if_lost(conn: asyncpg.Connection, error: BaseException) -> None:
    """A connection that failed at the connection level must not go back to the pool as it
    is: terminated, the pool replaces it instead of handing it to the next caller."""
    if _lost(error):
        # One the server closed is already on its way back; one left in a broken state
        # (InternalClientError) must not be reused.
        with contextlib.suppress(asyncpg.exceptions.InterfaceError):  # already released
            if not conn.is_closed():
                conn.terminate()


def _lost(error: BaseException) -> bool:
    if isinstance(error, ConnectionLost):
        return True
    return isinstance(error, _CONNECTION_LOST) and not isinstance(error, _BAD_VALUE)


class PostgresDialect(Dialect):
    """Labels are JSONB, mirrored into the indexed ``object_labels`` table for selectors;
    parameters are ``$n``; a set of values is bound as one array."""

    name: ClassVar[str] = "postgres"
    # The NOTIFY trigger reports every write, this process's own included.
    publishes_own_writes: ClassVar[bool] = False
    now_ms: ClassVar[str] = "(extract(epoch FROM statement_timestamp()) * 1000)::bigint"
    # The advisory lock is released at commit: a second process waits for it, then sees the
    # migrations the first one applied.
    begin_migrations: ClassVar[tuple[str, ...]] = (
        "BEGIN",
        f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})",
    )
    applied_at_ddl: ClassVar[str] = "applied_at TIMESTAMPTZ NOT NULL DEFAULT now()"
    applied_at: ClassVar[tuple[str, str]] = ("applied_at", "now()")
    # A lateral subquery the planner cannot pull up (OFFSET 0) can only be a nested loop: the
    # walk stays outer and each of its rows looks its object up by primary key. A plain JOIN
    # let the planner hash-join a seq scan of objects when it took another requirement
    # (team!=b) for selective, not knowing it correlates with the walked one.
    label_join: ClassVar[str] = (
        "CROSS JOIN LATERAL (SELECT * FROM objects WHERE objects.id = walk.object_id OFFSET 0) "
        "AS objects"
    )

    def placeholder(self, position: int) -> str:
        return f"${position}"

    def json_value(self, placeholder: str) -> str:
        return f"{placeholder}::jsonb"

    # A requirement tested on one object reads the labels of the row at hand: a selector's
    # leading requirement walks object_labels (migration 007, the SQL core's label walk) and
    # the row is already fetched by id, and a negative requirement is tested on each row of
    # the objects' order index. No index serves these operators since 007 dropped the GIN
    # index (nothing could use it any more, and every write of labels paid for it).
    def has_label_key(self, key: str) -> str:
        return f"labels ? {key}"

    def label_value_in(self, key: str, values: list[str]) -> str:
        if len(values) == 1:
            return f"labels @> jsonb_build_object({key}::text, {values[0]}::text)"
        pairs = ", ".join(f"jsonb_build_object({key}::text, {value}::text)" for value in values)
        return f"labels @> ANY(ARRAY[{pairs}])"

    def one_of(self, column: str, values: Sequence[str], params: Params) -> str:
        return f"{column} = ANY({params.bind(list(values))}::text[])"

    def labels_of(self, stored: Any) -> dict[str, str]:
        return json.loads(stored) if isinstance(stored, str) else dict(stored or {})

    def announced(self, write: str, returning: str, *, deleted: bool) -> str:
        """The write, and a ``NOTIFY shellgate_objects`` per written row from the same
        statement: delivered at commit to every replica's LISTEN connection, never for a
        write that rolled back. (Migration 004 did this with a row trigger; calling it cost
        each write about as much as the rest of its statement, bench/store_cas.py.)"""
        version = "NULL" if deleted else "resource_version"
        event = (
            "json_build_object('t', feed_type, 'i', feed_id, 'v', feed_version, "
            f"'d', {str(deleted).upper()}, 'm', feed_at_ms)::text"
        )
        return (
            f"WITH written AS ({write} RETURNING {returning}, object_type AS feed_type, "
            f"id AS feed_id, {version} AS feed_version, updated_at_ms AS feed_at_ms) "
            f"SELECT {returning}, pg_notify('{CHANNEL}', {event}) FROM written"
        )

    def translate(self, error: Exception) -> StoreError:
        if isinstance(error, asyncpg.exceptions.UniqueViolationError):
            return UniqueViolation(error.constraint_name, error.detail)
        if isinstance(error, _BAD_VALUE):
            return InvalidValue(f"the database refused a value: {error}")
        if isinstance(error, _CONNECTION_LOST):
            return ConnectionLost(f"Postgres connection lost: {error}")
        if isinstance(error, _UNAVAILABLE):
            return StoreUnavailable(f"Postgres unavailable: {error}")
        return StoreError(f"Postgres error: {error}")


class PostgresStore(SqlStore):
    dialect: ClassVar[Dialect] = PostgresDialect()

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        statement_timeout: float = DEFAULT_STATEMENT_TIMEOUT,
        acquire_timeout: float = DEFAULT_ACQUIRE_TIMEOUT,
        **options: Unpack[StoreOptions],
    ) -> None:
        super().__init__(**options)
        self.dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._statement_timeout = statement_timeout
        self._acquire_timeout = acquire_timeout
        self._pool: ConnectionPool | None = None

    @property
    def supports_multiple_replicas(self) -> bool:
        return True

    # ----- lifecycle ----------------------------------------------------------------------

    async def open(self, *, migrate_to: int | None = None) -> None:
        self._pool = ConnectionPool(
            self._connect,
            max_size=self._max_size,
            acquire_timeout=self._acquire_timeout,
            statement_limit=self._statement_timeout + CLIENT_TIMEOUT_SLACK,
        )
        try:
            await self._pool.fill(self._min_size)
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"cannot connect to Postgres: {exc}") from exc
        await self._migrate(migrate_to)

    async def _connect(self) -> asyncpg.Connection:
        # No command_timeout: the pool's statement clock bounds statements (pg_pool.py).
        return await asyncpg.connect(
            self.dsn,
            timeout=self._acquire_timeout,  # connecting
            server_settings={"statement_timeout": str(int(self._statement_timeout * 1000))},
        )

    async def _disconnect(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection, with every failure to get or use one mapped in one place.

        Waiting for a free connection is bounded (``acquire_timeout``). A connection that
        failed at the connection level is terminated before it returns to the pool, so the
        pool replaces it instead of handing the broken one to the next caller.
        """
        pool = self._open_pool
        conn = await self._acquire(pool)
        try:
            yield conn
        except Exception as exc:
            _terminate_if_lost(conn, exc)
            raise
        finally:
            pool.release(conn)

    # ----- executor -----------------------------------------------------------------------

    async def _rows(self, sql: str, params: Sequence[Any], *, read: bool = False) -> Sequence[Any]:
        return await self._run("fetch", sql, params, read)  # type: ignore[no-any-return]

    async def _row(self, sql: str, params: Sequence[Any], *, read: bool = False) -> Any:
        return await self._run("fetchrow", sql, params, read)

    async def _execute(self, sql: str) -> None:
        # Without arguments asyncpg uses the simple protocol: a migration file may hold
        # several statements.
        await self._run("execute", sql, (), read=False)

    @contextlib.asynccontextmanager
    async def _attempt_scope(self) -> AsyncIterator[None]:
        """Pin one pooled connection for a CAS attempt's read and write.

        Not a transaction (the ``WHERE resource_version`` guard needs none): it only saves a
        pool round trip per statement on the hot path.
        """
        if _PINNED.get() is not None:
            yield
            return
        async with self._connection() as conn:
            token = _PINNED.set(conn)
            try:
                yield
            finally:
                _PINNED.reset(token)

    async def _run(self, method: str, sql: str, args: Sequence[Any], read: bool) -> Any:
        """Run on the pinned connection, else on a pooled one; a read that lost its
        connection is tried once more on a fresh one (the pool replaced the broken one)."""
        pinned = _PINNED.get()
        if pinned is not None:
            try:
                return await self._clocked(pinned, getattr(pinned, method)(sql, *args))
            except _DRIVER_ERRORS as exc:
                raise self.dialect.translate(exc) from exc
        try:
            return await self._run_pooled(method, sql, args)
        except ConnectionLost:
            if not read:
                raise
            return await self._run_pooled(method, sql, args)

    async def _run_pooled(self, method: str, sql: str, args: Sequence[Any]) -> Any:
        try:
            async with self._connection() as conn:
                return await self._clocked(conn, getattr(conn, method)(sql, *args))
        except _DRIVER_ERRORS as exc:
            raise self.dialect.translate(exc) from exc

    async def _clocked(self, conn: asyncpg.Connection, statement: Awaitable[Any]) -> Any:
        """Await one statement on ``conn`` under the pool's statement clock."""
        pool = self._open_pool
        pool.started(conn)
        try:
            return await statement
        finally:
            pool.finished(conn)

    @property
    def _open_pool(self) -> ConnectionPool:
        if self._pool is None:
            raise StoreUnavailable("the Postgres store is not open")
        return self._pool

    # ----- the compare-and-swap attempt ----------------------------------------------------

    async def _cas_attempt(
        self,
        message_type: type[M],
        object_type: str,
        id: str,
        mutate: Mutation[M],
        expected_version: int,
        status: Callable[[M], str | None] | None = None,
    ) -> tuple[M, bool]:
        """The core's attempt with nothing between the database and the decision but the
        two statements: one pooled connection, both statements prepared on it, no context
        managers. Each statement is still reported to the observer as ``get`` / ``put_if``,
        and a failure is handled as ``_connection`` handles it (a lost connection is
        terminated, never reused)."""
        if _PINNED.get() is not None:  # inside a pinned scope: use its connection
            return await super()._cas_attempt(
                message_type, object_type, id, mutate, expected_version, status
            )
        pool = self._open_pool
        conn = pool.acquire_now() or await self._acquire(pool)
        try:
            read = self._sql.cas_read
            row = await self._prepared_row(conn, "get", read.sql, (object_type, id))
            candidate, write = self._plan_cas(
                message_type, object_type, id, row, mutate, expected_version, status
            )
            if write is None:
                return candidate, False
            row = await self._prepared_row(conn, "put_if", write.sql, write.params)
        except BaseException as exc:
            _terminate_if_lost(conn, exc)
            raise
        finally:
            pool.release(conn)
        version = self._cas_written(write, row)
        if version is None:
            raise await self._why_not_written(object_type, id)
        return self._written(candidate, write, version), True

    async def _cas_write_once(self, write: CasWrite) -> int | None:
        """The CAS update alone, prepared on a pooled connection (as in ``_cas_attempt``)."""
        if _PINNED.get() is not None:
            return await super()._cas_write_once(write)
        pool = self._open_pool
        conn = pool.acquire_now() or await self._acquire(pool)
        try:
            row = await self._prepared_row(conn, "put_if", write.sql, write.params)
        except BaseException as exc:
            _terminate_if_lost(conn, exc)
            raise
        finally:
            pool.release(conn)
        return self._cas_written(write, row)

    async def _acquire(self, pool: ConnectionPool) -> asyncpg.Connection:
        """A pooled connection, waiting for one; the driver's errors as the store's."""
        try:
            return await pool.acquire()
        except _DRIVER_ERRORS as exc:
            raise self.dialect.translate(exc) from exc

    async def _prepared_row(
        self, conn: asyncpg.Connection, operation: str, sql: str, args: Sequence[Any]
    ) -> Any:
        """One row of a fixed statement, prepared on ``conn``; reported as ``operation``."""
        pool = self._open_pool
        started = time.perf_counter()
        available: bool | None = None  # cancelled: nothing learned about the database
        try:
            statement = pool.prepared_now(conn, sql) or await pool.prepare(conn, sql)
            pool.started(conn)
            try:
                row = await statement.fetchrow(*args)
            finally:
                pool.finished(conn)
            available = True
            return row
        except _DRIVER_ERRORS as exc:
            error = self.dialect.translate(exc)
            available = not isinstance(error, StoreUnavailable)
            raise error from exc
        finally:
            seconds = time.perf_counter() - started
            self.observer.operation(self.backend, operation, seconds, available)

    # ----- change feed --------------------------------------------------------------------

    async def _start_change_source(self) -> None:
        """Start the LISTEN task and wait (briefly) until it listens, so that a subscriber
        hears of every write made after ``subscribe()`` returned."""
        listening = asyncio.Event()
        self._feed_task = asyncio.create_task(self._listen(listening))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(listening.wait(), LISTEN_READY_TIMEOUT)

    async def _listen(self, listening: asyncio.Event) -> None:
        """Hold a LISTEN connection; reconnect after a loss and tell subscribers to re-read."""
        while True:
            try:
                conn = await asyncpg.connect(self.dsn)
            except Exception as exc:  # whatever it is, the feed must come back when it can
                log.warning("change feed: cannot connect to Postgres (%s); retrying", exc)
                await asyncio.sleep(LISTEN_RETRY_SECONDS)
                continue
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _c, lost=lost: lost.set())
            try:
                await conn.add_listener(CHANNEL, self._on_notify)
                if listening.is_set():
                    # Anything may have changed while no listener was connected.
                    self._heard(ChangeEvent(None, None))
                listening.set()
                await lost.wait()
                log.warning("change feed: LISTEN connection lost; reconnecting")
            except Exception as exc:  # keep the listener alive; subscribers re-read on return
                log.warning("change feed: LISTEN failed (%s); reconnecting", exc)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=1)
            await asyncio.sleep(LISTEN_RETRY_SECONDS)

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        data = json.loads(payload)
        self._heard(ChangeEvent(data["t"], data["i"], data["v"], bool(data["d"]), data.get("m")))
