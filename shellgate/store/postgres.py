"""The Postgres backend: for several gateway replicas sharing one database.

An asyncpg pool; asyncpg prepares and caches every statement it runs. Every write is one
autocommitted statement whose ``WHERE resource_version = $n`` is the CAS guard and whose
``RETURNING`` gives the new version and times. Timestamps come from the database clock
(``statement_timestamp()``, one value per statement), so replicas with skewed clocks still
agree on them. Unique
violations are recognised by the constraint name Postgres reports.

The change feed is ``LISTEN shellgate_objects`` on a dedicated connection; a trigger
(migration 004) sends one NOTIFY per committed row change, from whichever replica wrote it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import asyncpg

from shellgate.store import migrations
from shellgate.store.base import RetryPolicy, Store, timed
from shellgate.store.errors import (
    Conflict,
    InvalidValue,
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

# The connection pinned by the CAS attempt running in this task, if any.
_PINNED: contextvars.ContextVar[asyncpg.Connection | None] = contextvars.ContextVar(
    "shellgate_postgres_pinned", default=None
)

NOW_MS = "(extract(epoch FROM statement_timestamp()) * 1000)::bigint"
CHANNEL = "shellgate_objects"
MIGRATION_LOCK_KEY = 0x5348454C4C  # "SHELL": one advisory lock id for all shellgate schemas
LISTEN_RETRY_SECONDS = 1.0
LISTEN_READY_TIMEOUT = 5.0

# Connection-level failures: the database is down or unreachable, not the request wrong.
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,  # credentials refused
    asyncpg.exceptions.InterfaceError,
)
# A value the database (or asyncpg's encoder) refuses: the request is wrong, not the server.
# asyncpg's client-side DataError subclasses InterfaceError, so it is matched first.
_BAD_VALUE = (asyncpg.exceptions.DataError, asyncpg.exceptions._base.DataError)

_INSERT = (
    "INSERT INTO objects (object_type, id, name, workspace, payload, labels, resource_version, "
    "created_at_ms, updated_at_ms, scope, version, status) "
    f"VALUES ($1, $2, $3, $4, $5, $6::jsonb, 1, {NOW_MS}, {NOW_MS}, $7, $8, $9) "
    "RETURNING resource_version, created_at_ms, updated_at_ms"
)
_UPDATE = (
    "UPDATE objects SET payload = $1, labels = COALESCE($2::jsonb, labels), "
    "status = COALESCE($3, status), "
    f"resource_version = resource_version + 1, updated_at_ms = {NOW_MS} "
    "WHERE object_type = $4 AND id = $5 AND resource_version = $6 "
    "RETURNING resource_version, created_at_ms, updated_at_ms"
)


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query when a connection returns to the pool.

    Pooled connections never hold session state (the change feed LISTENs on its own
    connection, migrations lock per transaction, nothing runs SET), and asyncpg still rolls
    back any open transaction. Measured: the reset was one of four round trips per CAS
    attempt (docs/benchmarks.md).
    """


class PostgresStore(Store):
    backend: ClassVar[str] = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        observer: StoreObserver | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        super().__init__(observer=observer, retry=retry)
        self.dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncio.Task[None] | None = None

    @property
    def supports_multiple_replicas(self) -> bool:
        return True

    # ----- lifecycle ----------------------------------------------------------------------

    async def open(self, *, migrate_to: int | None = None) -> None:
        try:
            self._pool = await asyncpg.create_pool(
                self.dsn, min_size=self._min_size, max_size=self._max_size, reset=_keep_session
            )
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"cannot connect to Postgres: {exc}") from exc
        await self._migrate(migrate_to)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _migrate(self, migrate_to: int | None) -> None:
        try:
            async with self._acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                    "name TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
                )
                applied = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
                for migration in migrations.load("postgres"):
                    if migration.version in applied:
                        continue
                    if migrate_to is not None and migration.version > migrate_to:
                        break
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                        migration.version,
                        migration.name,
                    )
                    log.info(
                        "applied postgres migration %03d_%s", migration.version, migration.name
                    )
        except asyncpg.PostgresError as exc:
            raise MigrationError(f"postgres migration failed: {exc}") from exc

    def _acquire(self) -> Any:
        if self._pool is None:
            raise StoreUnavailable("the Postgres store is not open")
        return self._pool.acquire()

    async def schema_version(self) -> int:
        value = await self._fetchval("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        return int(value)

    async def ping(self) -> None:
        await self._fetchval("SELECT 1")

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
        labels_json = (
            None
            if labels is None and not condition.is_create
            else (json.dumps(labels or {}, sort_keys=True, separators=(",", ":")))
        )
        if condition.is_create:
            row = await self._fetchrow(
                _INSERT,
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
            row = await self._fetchrow(
                _UPDATE, payload, labels_json, status, object_type, id, condition.expected_version
            )
        if row is not None:
            return WriteResult(row[0], row[1], row[2])
        raise await self._why_not_written(object_type, id)

    @timed("delete_if")
    async def delete_if(self, object_type: str, id: str, expected_resource_version: int) -> bool:
        deleted = await self._fetchval(
            "DELETE FROM objects WHERE object_type = $1 AND id = $2 AND resource_version = $3 "
            "RETURNING id",
            object_type,
            id,
            expected_resource_version,
        )
        if deleted is not None:
            return True
        error = await self._why_not_written(object_type, id)
        if isinstance(error, NotFound):
            return False
        raise error

    @timed("get")
    async def get(self, object_type: str, id: str) -> ObjectRecord | None:
        row = await self._fetchrow(
            f"SELECT {COLUMNS} FROM objects WHERE object_type = $1 AND id = $2", object_type, id
        )
        return None if row is None else _record(row)

    @timed("get_by_name")
    async def get_by_name(
        self, object_type: str, name: str, workspace: str = DEFAULT_WORKSPACE
    ) -> ObjectRecord | None:
        row = await self._fetchrow(
            f"SELECT {COLUMNS} FROM objects "
            "WHERE object_type = $1 AND workspace = $2 AND name = $3",
            object_type,
            workspace,
            name,
        )
        return None if row is None else _record(row)

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
        where = ["object_type = $1"]
        if workspace is not None:
            params.append(workspace)
            where.append(f"workspace = ${len(params)}")
        if scope is not None:
            params.append(scope)
            where.append(f"scope = ${len(params)}")
        compiler = SelectorCompiler("postgres", lambda n: f"${n}")
        where += compiler.compile(parse_selector(selector), params)
        if page_token:
            created, last_id = decode_page_token(page_token)
            params += [created, last_id]
            where.append(f"(created_at_ms, id) > (${len(params) - 1}, ${len(params)})")
        params.append(size + 1)
        rows = await self._fetch(
            f"SELECT {COLUMNS} FROM objects WHERE {' AND '.join(where)} "
            f"ORDER BY created_at_ms, id LIMIT ${len(params)}",
            *params,
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
        where = ["object_type = $1", "scope = $2", "version IS NOT NULL"]
        if below is not None:
            params.append(below)
            where.append(f"version < ${len(params)}")
        if statuses is not None:
            params.append(list(statuses))
            where.append(f"status = ANY(${len(params)}::text[])")
        params.append(clamp_page_size(limit))
        rows = await self._fetch(
            f"SELECT {COLUMNS} FROM objects WHERE {' AND '.join(where)} "
            f"ORDER BY version DESC LIMIT ${len(params)}",
            *params,
        )
        return [_record(row) for row in rows]

    # ----- helpers ------------------------------------------------------------------------

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        return await self._run("fetchrow", sql, args)

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        return await self._run("fetchval", sql, args)

    async def _fetch(self, sql: str, *args: Any) -> Any:
        return await self._run("fetch", sql, args)

    @contextlib.asynccontextmanager
    async def _attempt_scope(self) -> AsyncIterator[None]:
        """Pin one pooled connection for a CAS attempt's read and write.

        Not a transaction (the ``WHERE resource_version`` guard needs none): it only saves a
        pool round trip per statement on the hot path.
        """
        if _PINNED.get() is not None:
            yield
            return
        async with self._acquire() as conn:
            token = _PINNED.set(conn)
            try:
                yield
            finally:
                _PINNED.reset(token)

    async def _run(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        try:
            pinned = _PINNED.get()
            if pinned is not None:
                return await getattr(pinned, method)(sql, *args)
            async with self._acquire() as conn:
                return await getattr(conn, method)(sql, *args)
        except asyncpg.exceptions.UniqueViolationError as exc:
            raise UniqueViolation(exc.constraint_name, exc.detail) from exc
        except _BAD_VALUE as exc:
            raise InvalidValue(f"the database refused a value: {exc}") from exc
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"Postgres unavailable: {exc}") from exc
        except asyncpg.PostgresError as exc:
            raise StoreError(f"Postgres error: {exc}") from exc

    async def _why_not_written(self, object_type: str, id: str) -> Conflict | NotFound:
        current = await self._fetchval(
            "SELECT resource_version FROM objects WHERE object_type = $1 AND id = $2",
            object_type,
            id,
        )
        return NotFound(object_type, id) if current is None else Conflict(current)

    async def _start_change_source(self) -> None:
        """Start the LISTEN task and wait (briefly) until it listens, so that a subscriber
        hears of every write made after ``subscribe()`` returned."""
        listening = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(listening))
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
                    self._hub.publish(ChangeEvent(None, None))
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
        self._hub.publish(
            ChangeEvent(data["t"], data["i"], data["v"], bool(data["d"]), data.get("m"))
        )


def _record(row: Any) -> ObjectRecord:
    labels = row[5]
    return ObjectRecord(
        object_type=row[0],
        id=row[1],
        name=row[2],
        workspace=row[3],
        payload=bytes(row[4]),
        labels=json.loads(labels) if isinstance(labels, str) else dict(labels or {}),
        resource_version=max(int(row[6]), 1),
        created_at_ms=row[7],
        updated_at_ms=row[8],
        scope=row[9],
        version=row[10],
        status=row[11],
    )
