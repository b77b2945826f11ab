"""The SQL core: every statement of the store, written once for SQLite and Postgres.

``SqlStore`` implements the ``Store`` primitives on one ``objects`` table. What differs
between the databases is asked of a small ``Dialect`` (placeholders, the "now in ms"
expression, the JSON and array operators of selectors and ``status IN``, how labels come back,
how driver errors become the store's typed errors, the migrations and their lock, whether
a write announces itself to the change feed, and how a label walk joins objects). A selector
with an equality, set or existence requirement walks the ``object_labels`` table in list
order on both databases (``label_ordered_list``, written once here).
How a statement reaches the database (SQLite's event loop or database thread, or a Postgres
connection pinned per CAS attempt) and where the change feed comes from stay in the two
backend classes.

Two pieces are named functions on purpose, because each one alone is what makes a write safe:
``cas_predicate`` (an update or delete only touches the row at the version its caller read)
and ``must_create_on_duplicate`` (a create never overwrites a row whose id or name is taken).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any, ClassVar, NamedTuple, Unpack

from shellgate.store import migrations
from shellgate.store.base import (
    ListQuery,
    M,
    Mutation,
    RowWrite,
    Store,
    StoreOptions,
    VersionQuery,
    check_immutable_metadata,
    decode_row,
    encode_for_storage,
    observed,
    timed,
)
from shellgate.store.errors import (
    Conflict,
    MigrationError,
    NotFound,
    StoreError,
    StoreUnavailable,
)
from shellgate.store.paging import clamp_page_size, decode_page_token, page_of
from shellgate.store.records import (
    DEFAULT_WORKSPACE,
    ChangeEvent,
    ObjectRecord,
    Page,
    WriteResult,
)
from shellgate.store.selectors import Operator, Requirement, parse_selector
from shellgate.store.written_rows import WrittenRows

log = logging.getLogger(__name__)

COLUMNS = (
    "object_type, id, name, workspace, payload, labels, resource_version, "
    "created_at_ms, updated_at_ms, scope, version, status"
)
WRITTEN = "resource_version, created_at_ms, updated_at_ms"
"""What an insert or an update returns: the row's new version and its timestamps."""
_OBJECT_COLUMNS = ", ".join(f"objects.{column}" for column in COLUMNS.split(", "))
_VALUE_KINDS = (Operator.EQUALS, Operator.IN)

MAX_MERGED_VALUES = 8
"""The most values of a set whose walks are merged page by page (``label_ordered_list``)."""

LEAD_COUNT_LIMIT = 2000
"""How far each candidate's rows are counted when choosing which one a list walks: a
requirement selecting more is common enough that any other is as good a walk."""

Bind = Callable[[str], str]
"""Names a statement parameter and returns its placeholder in the statement text."""


def cas_predicate(bind: Bind) -> str:
    """The compare-and-swap of every update and delete.

    The row is written only while its ``resource_version`` is still the one the caller read,
    so the database, not Python, decides which of two racing writers wins; the loser's
    statement matches no row and becomes a ``Conflict``.
    """
    return f"resource_version = {bind('expected_version')}"


def must_create_on_duplicate() -> str:
    """What a create does when its id or name is taken: nothing, so the insert fails.

    No ``ON CONFLICT`` clause means the unique indexes reject the second of two racing
    creates with ``UniqueViolation``; a create can never replace a row someone else made.
    """
    return ""


CAS_WRITE_VALUES = (
    "payload",
    "labels",
    "status",
    "object_type",
    "id",
    "expected_version",
    "created_at_ms",
)
"""The values ``_plan_cas`` hands to the CAS update, in this order (each statement picks the
ones it binds: a tuple and an ``itemgetter``, no dict per write)."""


def cas_write(d: Dialect, labels: bool, status: bool, b: Bind) -> str:
    """The update of one ``update_message_cas`` attempt, setting only what changed.

    The payload, the version and the update time change on every write; the labels and the
    status column only when the mutation changed them. A column left out of ``SET`` costs
    nothing: SQLite rewrites the entries of every index on a column named in ``SET`` (and
    fires the label table's trigger), whatever the value, and on Postgres an unchanged
    indexed column keeps the update HOT. Measured on SQLite, naming the status column on
    every write cost about 4 % of the statement (bench/profile_cas.py).
    """
    columns = [f"payload = {b('payload')}"]
    if labels:
        columns.append(f"labels = {d.json_value(b('labels'))}")
    if status:
        columns.append(f"status = {b('status')}")
    columns += ["resource_version = resource_version + 1", f"updated_at_ms = {d.now_ms}"]
    # The creation time too: an update made from a remembered row (written_rows.py) must not
    # land on a row deleted and created again under the same id and back at that version.
    return d.announced(
        f"UPDATE objects SET {', '.join(columns)} WHERE {_the_row(b)} AND {cas_predicate(b)} "
        f"AND created_at_ms = {b('created_at_ms')}",
        WRITTEN,
        deleted=False,
    )


def _the_row(bind: Bind) -> str:
    """The one row a statement addresses: ids are unique, the type is checked too."""
    return f"object_type = {bind('object_type')} AND id = {bind('id')}"


class Dialect(abc.ABC):
    """What the core asks of a database whose SQL differs from the other one's."""

    name: ClassVar[str]
    now_ms: ClassVar[str]
    """An expression for the current time in milliseconds since the epoch."""
    begin_migrations: ClassVar[tuple[str, ...]]
    """Statements opening the migration transaction and taking the lock that makes
    processes starting at once apply each migration exactly once."""
    applied_at_ddl: ClassVar[str]
    applied_at: ClassVar[tuple[str, str]]
    """The ``schema_migrations`` column recording when a migration ran, and its value."""
    publishes_own_writes: ClassVar[bool]
    """True when the writing process must publish its own writes to the change feed (the
    database sends no notification that reaches it)."""
    label_join: ClassVar[str]
    """What follows ``FROM object_labels AS walk`` to look each walked row's object up by id,
    as ``objects``, with the walk kept the outer loop whatever the planner estimates."""

    @abc.abstractmethod
    def placeholder(self, position: int) -> str:
        """The text naming the parameter at ``position`` (1-based)."""

    def json_value(self, placeholder: str) -> str:
        """A parameter holding JSON text, as the labels column wants it."""
        return placeholder

    @abc.abstractmethod
    def has_label_key(self, key: str) -> str:
        """True when the labels hold the key bound at ``key``."""

    @abc.abstractmethod
    def label_value_in(self, key: str, values: list[str]) -> str:
        """True when the key is present with one of ``values`` (False when absent)."""

    # ----- the label walk (object_labels, SQLite 007 and Postgres 007) ---------------------
    # object_labels holds one row per label with the list order of its object (type,
    # workspace, created_at_ms, id), kept by triggers in the statement that writes the row.
    # ``key = ? AND value = ?`` (or ``key = ?``) with the object type (and workspace) fixed is
    # a range of its primary key (or of one of its indexes) already in list order.

    def lead_candidates(self, requirements: Sequence[Requirement]) -> list[Requirement]:
        """The requirements whose label index can give the list order, so that a page reads
        about a page of rows however many rows match (``label_ordered_list``), best first:
        equality and set requirements, then existence ones. A negative requirement cannot
        lead (the rows it selects are those absent from the table); a selector with none of
        these walks the objects' order index and tests every requirement on each row."""
        return [r for r in requirements if r.operator in _VALUE_KINDS] + [
            r for r in requirements if r.operator is Operator.EXISTS
        ]

    def lead_counts(
        self, candidates: Sequence[Requirement], walk: LabelWalk, params: Params
    ) -> str:
        """One row: how many label rows each candidate selects after ``walk.after``, counted
        up to ``walk.limit`` in the same index range it would walk."""
        counts = []
        for candidate in candidates:
            values: list[str | None] = [*candidate.values] or [None]
            rows = self._label_walk(candidate.key, values, walk, params, ids_only=True)
            counts.append(f"(SELECT count(*) FROM ({rows}) AS counted)")
        return f"SELECT {', '.join(counts)}"

    def label_ordered_list(self, lead: Requirement, walk: LabelWalk, params: Params) -> str:
        """The page's statement, walking ``lead``'s rows in object_labels in
        (created_at_ms, id) order and joining objects by id for each.

        The walk stops after ``limit`` rows that pass the other conditions. A set
        (``in (a, b)``) is one such walk per value, each stopping after ``limit`` rows,
        merged: at most ``limit`` rows per value, however many match. Up to
        ``MAX_MERGED_VALUES`` values: the statement grows with each (every walk repeats the
        other requirements' tests), and a selector of 64 requirements and 256 values would
        take hundreds of milliseconds to compile; a larger set is one walk whose matching
        rows are sorted.
        """
        values: list[str | None] = list(dict.fromkeys(lead.values)) or [None]
        if len(values) == 1 or len(values) > MAX_MERGED_VALUES:
            return self._label_walk(lead.key, values, walk, params)
        arms = [
            f"SELECT * FROM ({self._label_walk(lead.key, [value], walk, params)}) AS arm{n}"
            for n, value in enumerate(values)
        ]
        return (
            f"{' UNION ALL '.join(arms)} ORDER BY created_at_ms, id LIMIT {params.bind(walk.limit)}"
        )

    def _label_walk(
        self,
        key: str,
        values: Sequence[str | None],
        walk: LabelWalk,
        params: Params,
        *,
        ids_only: bool = False,
    ) -> str:
        """One walk of the label index; more than one value is a range per value, which
        the database then sorts (all the rows that match, not only a page's)."""
        where = [f"walk.key = {params.bind(key)}"]
        if len(values) > 1:
            where.append(f"walk.value IN ({', '.join(params.bind(v) for v in values)})")
        elif values[0] is not None:
            where.append(f"walk.value = {params.bind(values[0])}")
        where.append(f"walk.object_type = {params.bind(walk.object_type)}")
        if walk.workspace is not None:
            where.append(f"walk.workspace = {params.bind(walk.workspace)}")
        if walk.after is not None:
            created, last_id = walk.after
            where.append(
                f"(walk.created_at_ms, walk.object_id) > ({params.bind(created)}, "
                f"{params.bind(last_id)})"
            )
        if ids_only:  # the label rows alone, in no particular order: for counting them
            return (
                f"SELECT 1 FROM object_labels AS walk WHERE {' AND '.join(where)} "
                f"LIMIT {params.bind(walk.limit)}"
            )
        where += walk.rest(params)
        return (
            f"SELECT {_OBJECT_COLUMNS} FROM object_labels AS walk {self.label_join} "
            f"WHERE {' AND '.join(where)} "
            f"ORDER BY walk.created_at_ms, walk.object_id LIMIT {params.bind(walk.limit)}"
        )

    @abc.abstractmethod
    def one_of(self, column: str, values: Sequence[str], params: Params) -> str:
        """``column`` equals one of ``values``, bound through ``params``."""

    @abc.abstractmethod
    def labels_of(self, stored: Any) -> dict[str, str]:
        """The labels column as read back by the driver."""

    @abc.abstractmethod
    def translate(self, error: Exception) -> StoreError:
        """The store's typed error for a driver error, so no driver type leaks upwards."""

    def migration_statements(self, migration: migrations.Migration) -> list[str]:
        """The statements of one migration file, as the driver can run them."""
        return [migration.sql]

    def announced(self, write: str, returning: str, *, deleted: bool) -> str:
        """``write`` returning ``returning`` of the rows it wrote; a dialect whose database
        carries the change feed also announces each written row there, in the same
        statement (so only a committed write is ever announced)."""
        return f"{write} RETURNING {returning}"


class LabelWalk(NamedTuple):
    """What a list walking a label index needs besides its leading requirement."""

    object_type: str
    workspace: str | None
    after: tuple[int, str] | None
    """The last row of the previous page, as (created_at_ms, id)."""
    limit: int
    """Rows to read: the page size plus one, which tells whether a next page exists."""
    rest: Callable[[Params], list[str]]
    """Binds and returns the other conditions on ``objects``: scope, other requirements."""


class CasWrite(NamedTuple):
    """The update one CAS attempt decided on: the statement and its bound values, and the
    row as it will read once written (CAS-read shape, the new version left at 0)."""

    object_type: str
    id: str
    sql: str
    params: tuple[Any, ...]
    after: tuple[Any, ...]


class Params:
    """Parameters of a statement built per call; ``bind`` returns the value's placeholder."""

    __slots__ = ("_dialect", "values")

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self.values: list[Any] = []

    def bind(self, value: Any) -> str:
        self.values.append(value)
        return self._dialect.placeholder(len(self.values))


class Statement:
    """A statement built once per store, and the order in which its named values bind."""

    __slots__ = ("_pick", "names", "sql")

    def __init__(self, dialect: Dialect, build: Callable[[Bind], str]) -> None:
        names: list[str] = []

        def bind(name: str) -> str:
            names.append(name)
            return dialect.placeholder(len(names))

        self.sql = build(bind)
        self.names = tuple(names)
        pick = itemgetter(*names)
        self._pick: Callable[[Mapping[str, Any]], tuple[Any, ...]] = (
            pick if len(names) > 1 else lambda values: (pick(values),)
        )

    def params(self, values: Mapping[str, Any]) -> tuple[Any, ...]:
        return self._pick(values)


class Statements:
    """Every fixed statement of the store, in one dialect."""

    def __init__(self, d: Dialect) -> None:
        now = d.now_ms
        self.insert = Statement(
            d,
            lambda b: d.announced(
                "INSERT INTO objects (object_type, id, name, workspace, payload, labels, "
                "resource_version, created_at_ms, updated_at_ms, scope, version, status) "
                f"VALUES ({b('object_type')}, {b('id')}, {b('name')}, {b('workspace')}, "
                f"{b('payload')}, {d.json_value(b('labels'))}, 1, {now}, {now}, "
                f"{b('scope')}, {b('version')}, {b('status')}) "
                f"{must_create_on_duplicate()}",
                WRITTEN,
                deleted=False,
            ),
        )
        self.update = Statement(
            d,
            lambda b: d.announced(
                f"UPDATE objects SET payload = {b('payload')}, "
                f"labels = COALESCE({d.json_value(b('labels'))}, labels), "
                f"status = COALESCE({b('status')}, status), "
                f"resource_version = resource_version + 1, updated_at_ms = {now} "
                f"WHERE {_the_row(b)} AND {cas_predicate(b)}",
                WRITTEN,
                deleted=False,
            ),
        )
        self.delete = Statement(
            d,
            lambda b: d.announced(
                f"DELETE FROM objects WHERE {_the_row(b)} AND {cas_predicate(b)}",
                "id",
                deleted=True,
            ),
        )
        self.touch_by_name = Statement(
            d,
            lambda b: d.announced(
                f"UPDATE objects SET resource_version = resource_version + 1, "
                f"updated_at_ms = {now} WHERE object_type = {b('object_type')} "
                f"AND workspace = {b('workspace')} AND name = {b('name')}",
                "id, resource_version, updated_at_ms",
                deleted=False,
            ),
        )
        self.get = Statement(d, lambda b: f"SELECT {COLUMNS} FROM objects WHERE {_the_row(b)}")
        self.get_by_name = Statement(
            d,
            lambda b: (
                f"SELECT {COLUMNS} FROM objects WHERE object_type = {b('object_type')} "
                f"AND workspace = {b('workspace')} AND name = {b('name')}"
            ),
        )
        self.cas_read = Statement(
            d,
            lambda b: (
                "SELECT payload, resource_version, name, workspace, status, created_at_ms "
                f"FROM objects WHERE {_the_row(b)}"
            ),
        )
        self.cas_writes = {
            (labels, status): Statement(d, functools.partial(cas_write, d, labels, status))
            for labels in (False, True)
            for status in (False, True)
        }
        """The CAS update of ``update_message_cas``, by (labels changed, status changed)."""
        if self.cas_read.names != ("object_type", "id"):  # the backends' attempts bind so
            raise AssertionError(f"cas_read binds {self.cas_read.names}")
        self.cas_write_params = {
            key: itemgetter(*(CAS_WRITE_VALUES.index(name) for name in statement.names))
            for key, statement in self.cas_writes.items()
        }
        """Each CAS update's parameters, picked from a ``CAS_WRITE_VALUES`` tuple."""
        self.current_version = Statement(
            d, lambda b: f"SELECT resource_version FROM objects WHERE {_the_row(b)}"
        )
        column, value = d.applied_at
        self.record_migration = Statement(
            d,
            lambda b: (
                f"INSERT INTO schema_migrations (version, name, {column}) "
                f"VALUES ({b('version')}, {b('name')}, {value})"
            ),
        )
        self.create_migrations_table = (
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
            f"name TEXT NOT NULL, {d.applied_at_ddl})"
        )


class SqlStore(Store):
    """The store on one ``objects`` table; subclasses supply the executor and feed."""

    dialect: ClassVar[Dialect]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "dialect" in cls.__dict__:
            cls.backend = cls.dialect.name  # one name for the backend and its dialect

    def __init__(self, **options: Unpack[StoreOptions]) -> None:
        super().__init__(**options)
        self._sql = Statements(self.dialect)
        self._feed_task: asyncio.Task[None] | None = None
        self._written_rows = WrittenRows()

    async def close(self) -> None:
        if self._feed_task is not None:
            self._feed_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._feed_task
            self._feed_task = None
        await self._disconnect()

    # ----- what each backend supplies -----------------------------------------------------

    @abc.abstractmethod
    async def _disconnect(self) -> None:
        """Close the connection or pool (the change feed is already stopped)."""

    @abc.abstractmethod
    async def _rows(self, sql: str, params: Sequence[Any], *, read: bool = False) -> Sequence[Any]:
        """Run one statement; its rows. Driver errors come out as ``dialect.translate``.

        ``read`` marks a statement that changes nothing, which a backend may run again after
        a dropped connection (a write may have committed before the connection dropped, so
        it is never repeated here).
        """

    async def _row(self, sql: str, params: Sequence[Any], *, read: bool = False) -> Any:
        """Run one statement; its first row or None."""
        rows = await self._rows(sql, params, read=read)
        return rows[0] if rows else None

    @abc.abstractmethod
    async def _execute(self, sql: str) -> None:
        """Run statements without parameters (transaction control, migration files)."""

    # ----- primitives ---------------------------------------------------------------------

    @timed("put_if")
    async def _put(self, write: RowWrite) -> WriteResult:
        self._written_rows.forget((write.object_type, write.id))
        condition = write.condition
        values: dict[str, Any] = {
            "object_type": write.object_type,
            "id": write.id,
            "payload": write.payload,
            "labels": _labels_json(write.labels, keep=not condition.is_create),
            "status": write.status,
        }
        if condition.is_create:
            statement = self._sql.insert
            values.update(
                name=write.name, workspace=write.workspace, scope=write.scope, version=write.version
            )
        else:
            statement = self._sql.update
            values["expected_version"] = condition.expected_version
        row = await self._row(statement.sql, statement.params(values))
        if row is None:
            raise await self._why_not_written(write.object_type, write.id)
        rv, created, updated = row[0], row[1], row[2]
        if self.dialect.publishes_own_writes:
            self._hub.publish(ChangeEvent(write.object_type, write.id, rv, committed_at_ms=updated))
        return WriteResult(rv, created, updated)

    @timed("delete_if")
    async def delete_if(self, object_type: str, id: str, expected_resource_version: int) -> bool:
        self._written_rows.forget((object_type, id))
        statement = self._sql.delete
        values = {
            "object_type": object_type,
            "id": id,
            "expected_version": expected_resource_version,
        }
        if await self._row(statement.sql, statement.params(values)) is not None:
            if self.dialect.publishes_own_writes:
                self._hub.publish(ChangeEvent(object_type, id, None, deleted=True))
            return True
        error = await self._why_not_written(object_type, id)
        if isinstance(error, NotFound):
            return False
        raise error

    @timed("touch")
    async def touch_by_name(
        self, object_type: str, name: str, workspace: str = DEFAULT_WORKSPACE
    ) -> int | None:
        statement = self._sql.touch_by_name
        values = {"object_type": object_type, "workspace": workspace, "name": name}
        row = await self._row(statement.sql, statement.params(values))
        if row is None:
            return None
        self._written_rows.forget((object_type, row[0]))
        if self.dialect.publishes_own_writes:
            self._hub.publish(ChangeEvent(object_type, row[0], row[1], committed_at_ms=row[2]))
        return int(row[1])

    @timed("get")
    async def get(self, object_type: str, id: str) -> ObjectRecord | None:
        statement = self._sql.get
        row = await self._row(
            statement.sql, statement.params({"object_type": object_type, "id": id}), read=True
        )
        return None if row is None else self._record(row)

    @timed("get_by_name")
    async def get_by_name(
        self, object_type: str, name: str, workspace: str = DEFAULT_WORKSPACE
    ) -> ObjectRecord | None:
        statement = self._sql.get_by_name
        values = {"object_type": object_type, "workspace": workspace, "name": name}
        row = await self._row(statement.sql, statement.params(values), read=True)
        return None if row is None else self._record(row)

    @timed("list")
    async def _list(self, query: ListQuery) -> Page:
        size = clamp_page_size(query.limit)
        requirements = parse_selector(query.selector)
        after = decode_page_token(query.page_token) if query.page_token else None
        params = Params(self.dialect)
        candidates = self.dialect.lead_candidates(requirements)
        if not candidates:
            sql = self._list_in_object_order(query, requirements, after, size + 1, params)
        else:
            lead = await self._rarest(candidates, query, after)
            others = [r for r in requirements if r is not lead]

            def rest(bound: Params) -> list[str]:
                where = (
                    [] if query.scope is None else [f"objects.scope = {bound.bind(query.scope)}"]
                )
                return where + [self._selector_clause(r, bound) for r in others]

            walk = LabelWalk(query.object_type, query.workspace, after, size + 1, rest)
            sql = self.dialect.label_ordered_list(lead, walk, params)
        rows = await self._rows(sql, params.values, read=True)
        return page_of([self._record(row) for row in rows], size)

    async def _rarest(
        self,
        candidates: Sequence[Requirement],
        query: ListQuery,
        after: tuple[int, str] | None,
    ) -> Requirement:
        """The candidate that selects the fewest rows, counted up to LEAD_COUNT_LIMIT each;
        the first among equals. Walking a common requirement and testing a rare one would
        read every row the common one selects to fill a page; walking the rare one reads
        its own rows only. One statement, only when there is a choice."""
        if len(candidates) == 1:
            return candidates[0]
        params = Params(self.dialect)
        walk = LabelWalk(query.object_type, query.workspace, after, LEAD_COUNT_LIMIT, _nothing)
        rows = await self._rows(
            self.dialect.lead_counts(candidates, walk, params), params.values, read=True
        )
        counts = list(rows[0])
        return candidates[counts.index(min(counts))]

    def _list_in_object_order(
        self,
        query: ListQuery,
        requirements: Sequence[Requirement],
        after: tuple[int, str] | None,
        limit: int,
        params: Params,
    ) -> str:
        """A page walking the objects' order index (by workspace when one is given)."""
        where = [f"object_type = {params.bind(query.object_type)}"]
        if query.workspace is not None:
            where.append(f"workspace = {params.bind(query.workspace)}")
        if query.scope is not None:
            where.append(f"scope = {params.bind(query.scope)}")
        where += [self._selector_clause(r, params) for r in requirements]
        if after is not None:
            created, last_id = after
            where.append(f"(created_at_ms, id) > ({params.bind(created)}, {params.bind(last_id)})")
        return (
            f"SELECT {COLUMNS} FROM objects WHERE {' AND '.join(where)} "
            f"ORDER BY created_at_ms, id LIMIT {params.bind(limit)}"
        )

    @timed("list_versions")
    async def _list_versions(self, query: VersionQuery) -> Sequence[ObjectRecord]:
        params = Params(self.dialect)
        where = [
            f"object_type = {params.bind(query.object_type)}",
            f"scope = {params.bind(query.scope)}",
            "version IS NOT NULL",
        ]
        if query.below is not None:
            where.append(f"version < {params.bind(query.below)}")
        if query.statuses is not None:
            where.append(self.dialect.one_of("status", query.statuses, params))
        rows = await self._rows(
            f"SELECT {COLUMNS} FROM objects WHERE {' AND '.join(where)} "
            f"ORDER BY version DESC LIMIT {params.bind(clamp_page_size(query.limit))}",
            params.values,
            read=True,
        )
        return [self._record(row) for row in rows]

    @timed("count_by_status")
    async def count_by_status(self, object_type: str) -> dict[str | None, int]:
        params = Params(self.dialect)
        rows = await self._rows(
            "SELECT status, COUNT(*) FROM objects "
            f"WHERE object_type = {params.bind(object_type)} GROUP BY status",
            params.values,
            read=True,
        )
        return {row[0]: int(row[1]) for row in rows}

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
        """One read-mutate-write, on two of the core's statements and nothing between them.

        The read takes only the columns the write needs, and no record objects are built
        for the row or the write: on the path of every update, the Python between the two
        statements cost as much as a statement (bench/profile_cas.py). The read and the
        write are still reported to the observer as ``get`` and ``put_if``.
        """
        async with self._attempt_scope():
            row = await observed(self, "get", self._read_for_cas(object_type, id))
            candidate, write = self._plan_cas(
                message_type, object_type, id, row, mutate, expected_version, status
            )
            if write is None:
                return candidate, False
            version = await observed(self, "put_if", self._write_at_version(write))
        return self._written(candidate, write, version), True

    def _plan_cas(
        self,
        message_type: type[M],
        object_type: str,
        id: str,
        row: Any,
        mutate: Mutation[M],
        expected_version: int,
        status: Callable[[M], str | None] | None,
        *,
        remembered: bool = False,
    ) -> tuple[M, CasWrite | None]:
        """The decision between the read and the write: the mutated message, and the write
        to make (None when the mutation changed nothing). Runs no statement.

        ``NotFound`` for a missing row; ``Conflict`` when a client-driven version is stale;
        whatever the mutation raises. The labels column is written when the mutation changed
        ``metadata.labels``, the status column when ``status`` gives a value other than the
        stored one; otherwise neither is named in the update (``cas_write``).
        """
        if row is None:
            raise NotFound(object_type, id)
        stored, version, name, workspace, stored_status, created_ms = row
        if expected_version and version != expected_version:
            raise Conflict(version)
        stored = bytes(stored)
        current = decode_row(message_type, stored, version, created_ms, workspace)
        # dict(map.items()): a third cheaper than dict(map), which looks each key up again.
        labels_before = dict(current.metadata.labels.items())  # type: ignore[attr-defined]
        candidate = mutate(current)
        check_immutable_metadata(candidate, id, name, workspace)
        payload = encode_for_storage(candidate)
        if payload == stored:
            # Equal bytes: the mutation changed nothing (stored payloads are the same
            # deterministic encoding), so nothing is written. (Of a remembered row that is
            # no answer yet: the caller reads the row and decides again.)
            if not remembered:
                self.observer.cas_attempt(object_type, "noop")
            return candidate, None
        labels = dict(candidate.metadata.labels.items())  # type: ignore[attr-defined]
        new_status = None if status is None else status(candidate)
        write_labels = labels != labels_before
        write_status = new_status is not None and new_status != stored_status
        key = write_labels, write_status
        labels_json = _labels_json(labels, keep=False) if write_labels else None
        values = (payload, labels_json, new_status, object_type, id, version, created_ms)
        params = self._sql.cas_write_params[key](values)  # picked from CAS_WRITE_VALUES
        after = (payload, 0, name, workspace, new_status if write_status else stored_status)
        write = CasWrite(
            object_type, id, self._sql.cas_writes[key].sql, params, (*after, created_ms)
        )
        return candidate, write

    def _written(self, candidate: M, write: CasWrite, version: int) -> M:
        """After a CAS write at ``version``: the message carries it, the row is remembered
        for the next update (``WrittenRows``), and the attempt is reported."""
        candidate.metadata.resource_version = version  # type: ignore[attr-defined]
        after = write.after
        self._written_rows.remember((write.object_type, write.id), (after[0], version, *after[2:]))
        self.observer.cas_attempt(write.object_type, "written")
        return candidate

    async def _update_from_memory(
        self,
        message_type: type[M],
        object_type: str,
        id: str,
        mutate: Mutation[M],
        status: Callable[[M], str | None] | None,
    ) -> M | None:
        """The first try of a server-driven update: from the row this store last wrote, if
        it remembers it, with no read. The written message, or None when there is nothing
        to try or the try told nothing (then ``update_message_cas`` reads and decides as
        always).

        The try tells nothing when the remembered row is no longer the row (the write,
        conditioned on its version and creation time, matches nothing: the row is
        forgotten), when the mutation changes nothing in it or raises (the current row may
        differ: its own attempt will say). No answer, error or "unchanged" ever comes from
        a remembered row; only a write that landed does. Not an attempt of the retry rule:
        the attempts that follow read the row, as the rule says.
        """
        key = (object_type, id)
        row = self._written_rows.get(key)
        if row is None:
            return None
        try:
            candidate, write = self._plan_cas(
                message_type, object_type, id, row, mutate, 0, status, remembered=True
            )
        except Exception:  # decided from a guess: the attempts that read will decide
            return None
        if write is None:
            return None
        version = await self._cas_write_once(write)
        if version is None:  # forget it, unless another update remembered a newer one since
            self._written_rows.forget_if(key, row)
            self.observer.cas_attempt(object_type, "stale")
            return None
        return self._written(candidate, write, version)

    def _heard(self, event: ChangeEvent) -> None:
        """A hint from the change feed's source (another writer, or a wildcard): forget the
        remembered rows it makes stale, then pass it on to the subscribers."""
        if event.id is None or event.object_type is None:
            self._written_rows.clear()
        else:
            version = None if event.deleted else event.resource_version
            self._written_rows.forget_unless((event.object_type, event.id), version)
        self._hub.publish(event)

    async def _cas_write_once(self, write: CasWrite) -> int | None:
        """The CAS update alone; its new version, or None when it matched no row."""
        row = await observed(self, "put_if", self._row(write.sql, write.params))
        return self._cas_written(write, row)

    async def _read_for_cas(self, object_type: str, id: str) -> Any:
        """The row's payload, version, name, workspace, status and creation time, or None."""
        read = self._sql.cas_read
        return await self._row(
            read.sql, read.params({"object_type": object_type, "id": id}), read=True
        )

    async def _write_at_version(self, write: CasWrite) -> int:
        """The CAS update of one row; its new version (``Conflict``/``NotFound`` if none)."""
        version = self._cas_written(write, await self._row(write.sql, write.params))
        if version is None:
            raise await self._why_not_written(write.object_type, write.id)
        return version

    def _cas_written(self, write: CasWrite, row: Any) -> int | None:
        """The new version the CAS update returned, announced when the backend publishes
        its own writes; None when it matched no row."""
        if row is None:
            return None
        if self.dialect.publishes_own_writes and self._hub.listened:
            event = ChangeEvent(write.object_type, write.id, row[0], committed_at_ms=row[2])
            self._hub.publish(event)
        return int(row[0])

    # ----- schema -------------------------------------------------------------------------

    async def schema_version(self) -> int:
        row = await self._row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations", (), read=True
        )
        return int(row[0])

    async def ping(self) -> None:
        try:
            await self._rows("SELECT 1", ())
        except StoreUnavailable:
            raise
        except Exception as exc:  # whatever the driver says, the database did not answer
            raise StoreUnavailable(f"{self.backend} database unavailable: {exc}") from exc

    async def _migrate(self, migrate_to: int | None) -> None:
        """Apply the migrations not yet recorded, in one transaction under the dialect's lock."""
        async with self._attempt_scope():
            try:
                for statement in self.dialect.begin_migrations:
                    await self._execute(statement)
                await self._apply_migrations(migrate_to)
                await self._execute("COMMIT")
            except StoreError as exc:
                with contextlib.suppress(StoreError):
                    await self._execute("ROLLBACK")
                raise MigrationError(f"{self.backend} migration failed: {exc}") from exc

    async def _apply_migrations(self, migrate_to: int | None) -> None:
        await self._execute(self._sql.create_migrations_table)
        applied = {row[0] for row in await self._rows("SELECT version FROM schema_migrations", ())}
        record = self._sql.record_migration
        for migration in migrations.load(self.dialect.name):
            if migration.version in applied:
                continue
            if migrate_to is not None and migration.version > migrate_to:
                break
            for statement in self.dialect.migration_statements(migration):
                await self._execute(statement)
            values = {"version": migration.version, "name": migration.name}
            await self._rows(record.sql, record.params(values))
            log.info(
                "applied %s migration %03d_%s", self.backend, migration.version, migration.name
            )

    # ----- helpers ------------------------------------------------------------------------

    async def _why_not_written(self, object_type: str, id: str) -> Conflict | NotFound:
        statement = self._sql.current_version
        row = await self._row(
            statement.sql, statement.params({"object_type": object_type, "id": id}), read=True
        )
        return NotFound(object_type, id) if row is None else Conflict(row[0])

    def _selector_clause(self, requirement: Requirement, params: Params) -> str:
        """One label requirement as SQL; its key and values are always bound, never spliced."""
        key = params.bind(requirement.key)
        op = requirement.operator
        if op in (Operator.EXISTS, Operator.DOES_NOT_EXIST):
            test = self.dialect.has_label_key(key)
            return test if op is Operator.EXISTS else f"NOT ({test})"
        values = [params.bind(value) for value in requirement.values]
        matches = self.dialect.label_value_in(key, values)
        return matches if op in (Operator.EQUALS, Operator.IN) else f"NOT ({matches})"

    def _record(self, row: Any) -> ObjectRecord:
        return ObjectRecord(
            object_type=row[0],
            id=row[1],
            name=row[2],
            workspace=row[3],
            payload=bytes(row[4]),
            labels=self.dialect.labels_of(row[5]),
            resource_version=max(int(row[6]), 1),
            created_at_ms=row[7],
            updated_at_ms=row[8],
            scope=row[9],
            version=row[10],
            status=row[11],
        )


def _nothing(params: Params) -> list[str]:
    """No further conditions (a ``LabelWalk.rest``)."""
    return []


def _labels_json(labels: dict[str, str] | None, *, keep: bool) -> str | None:
    """The labels column value; None on an update means "keep the stored labels"."""
    if labels is None and keep:
        return None
    return json.dumps(labels or {}, sort_keys=True, separators=(",", ":"))
