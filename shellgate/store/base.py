"""The ``Store`` interface and the logic every backend shares.

Backends implement a handful of single-statement primitives (``put_if``, ``delete_if``,
``get``, ``get_by_name``, ``list``). Everything built on them lives here once: the typed
protobuf helpers and ``update_message_cas``, the read-mutate-CAS loop every update in the
system goes through.

``update_message_cas`` rules (docs/persistence.md explains why):

* server-driven mode (``expected_version == 0``): at most ``RetryPolicy.attempts`` attempts;
  each re-reads the row and re-applies the *mutation* to the fresh copy, never re-sending bytes
  built for an earlier attempt; between attempts a random pause under a growing ceiling (full
  jitter) spreads a burst of writers out instead of letting them collide again in lockstep.
  Before them, a backend may try once without a read, from the row it last wrote
  (``_update_from_memory``): a write that lands ends the call; a write that matches
  nothing, or a mutation that raises or changes nothing on that row, is forgotten and the
  attempts run as above (a database error of that write propagates: it may have landed);
* client-driven mode (``expected_version != 0``): one attempt; a stale version is a Conflict;
* a mutation may raise to abort: nothing is written and the exception propagates;
* a mutation that changes nothing writes nothing: no version bump, no notification.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, ParamSpec, TypedDict, TypeVar, Unpack

from google.protobuf.message import Message

from shellgate.store.errors import Conflict, InvalidMutation, NotFound, StoreError, StoreUnavailable
from shellgate.store.feed import ChangeHub, RowWatch, Subscription
from shellgate.store.messages import object_type_of
from shellgate.store.observer import NullObserver, StoreObserver
from shellgate.store.records import (
    DEFAULT_WORKSPACE,
    CasOutcome,
    ObjectRecord,
    Page,
    WriteCondition,
    WriteResult,
)
from shellgate.store.retry import Attempt, retry_counting, retry_on_conflict

M = TypeVar("M", bound=Message)
P = ParamSpec("P")
R = TypeVar("R")

Mutation = Callable[[M], M]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How ``update_message_cas`` retries in server-driven mode.

    The pause before attempt ``n + 1`` is uniform in ``[0, min(max_delay, base_delay * 2**(n-1))]``
    (full jitter): 0-40, 0-80, 0-160, 0-320 ms with the defaults. Tuned with
    tests/e2e/test_replicas_attach.py (30 simultaneous attaches to one sandbox through 3
    `serve` processes on one Postgres, 2 cores, other work running): with a 10 ms base 21-29
    of 30 answered OK on their first call over 5 runs; with 25 ms 28-30; with 40 ms 30 of 30
    in 8 of 8 runs. A conflict costs a pause, never a lost write, so the wider window is cheap.
    """

    attempts: int = 5
    base_delay: float = 0.040
    max_delay: float = 0.500

    def pause(self, failed_attempt: int, rng: random.Random) -> float:
        ceiling = min(self.max_delay, self.base_delay * 2 ** (failed_attempt - 1))
        return rng.uniform(0.0, ceiling)


AsyncFunction = Callable[P, Coroutine[Any, Any, R]]


def timed(operation: str) -> Callable[[AsyncFunction[P, R]], AsyncFunction[P, R]]:
    """Report the duration and the outcome of a backend primitive to the store's observer."""

    def decorate(function: AsyncFunction[P, R]) -> AsyncFunction[P, R]:
        @functools.wraps(function)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            store: Store = args[0]  # type: ignore[assignment]
            return await observed(store, operation, function(*args, **kwargs))

        return wrapper

    return decorate


async def observed(store: Store, operation: str, pending: Awaitable[R]) -> R:
    """Await ``pending`` and report its duration and outcome as ``operation``."""
    started = time.perf_counter()
    available: bool | None = None  # neither: cancelled, or a bug (nothing about the database)
    try:
        result = await pending
    except StoreUnavailable:
        available = False
        raise
    except StoreError:  # a conflict, a duplicate, a missing row: the database answered
        available = True
        raise
    else:
        available = True
        return result
    finally:
        seconds = time.perf_counter() - started
        store.observer.operation(store.backend, operation, seconds, available)


@dataclass(slots=True)
class RowWrite:
    """The arguments of one ``put_if``, handed to the backend as one value."""

    object_type: str
    id: str
    name: str | None
    payload: bytes
    labels: dict[str, str] | None
    condition: WriteCondition
    workspace: str
    scope: str | None
    version: int | None
    status: str | None


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The arguments of one ``list``, handed to the backend as one value."""

    object_type: str
    workspace: str | None
    selector: str
    limit: int
    page_token: str
    scope: str | None


@dataclass(frozen=True, slots=True)
class VersionQuery:
    """The arguments of one ``list_versions``, handed to the backend as one value."""

    object_type: str
    scope: str
    below: int | None
    statuses: Sequence[str] | None
    limit: int


class StoreOptions(TypedDict, total=False):
    """What every backend's constructor takes besides its own connection settings."""

    observer: StoreObserver | None
    retry: RetryPolicy | None
    rng: random.Random | None


class Store(abc.ABC):
    """Persistence for every object shellgate keeps, with compare-and-swap writes."""

    backend: ClassVar[str]

    def __init__(self, **options: Unpack[StoreOptions]) -> None:
        observer, retry, rng = options.get("observer"), options.get("retry"), options.get("rng")
        self.observer: StoreObserver = observer or NullObserver()
        self.retry = retry or RetryPolicy()
        self._rng = rng or random.Random()
        self._hub = ChangeHub(self._start_change_source)

    # ----- capabilities -------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def supports_multiple_replicas(self) -> bool:
        """True when several gateway processes may share this database safely."""

    # ----- primitives each backend implements ---------------------------------------------

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
        """Insert (``MUST_CREATE``) or update (``match(v)``) one row in one statement.

        Raises ``UniqueViolation`` on a duplicate create, ``Conflict(current)`` when a matched
        update finds another version, and ``NotFound`` when the row to update is gone. The
        version is bumped by the database (``resource_version + 1``) and returned with the
        timestamps by the writing statement itself. ``name``, ``workspace`` and ``scope`` are
        set at create and never changed by an update; ``labels`` and ``status`` are updated
        when not None (None keeps the stored value; at create None means no labels).
        """
        return await self._put(
            RowWrite(
                object_type, id, name, payload, labels, condition, workspace, scope, version, status
            )
        )

    @abc.abstractmethod
    async def _put(self, write: RowWrite) -> WriteResult:
        """``put_if``, with its arguments gathered in one record."""

    @abc.abstractmethod
    async def delete_if(self, object_type: str, id: str, expected_resource_version: int) -> bool:
        """Delete the row only at ``expected_resource_version``.

        True when deleted, False when there was no such row, ``Conflict(current)`` when the row
        exists at another version.
        """

    @abc.abstractmethod
    async def touch_by_name(
        self, object_type: str, name: str, workspace: str = DEFAULT_WORKSPACE
    ) -> int | None:
        """Move the named row's version on by one without changing its content, whatever
        version it has; the new version, or None when no such row exists.

        The one write that names no version, on purpose: it changes nothing a reader sees but
        the version, and its condition is the row's existence. It proves a row still existed
        after the caller's previous write, and makes any ``delete_if`` at an older version
        fail (``ProviderRepository.fence``). Two touches never conflict: each moves the
        version on from wherever the other left it.
        """

    @abc.abstractmethod
    async def get(self, object_type: str, id: str) -> ObjectRecord | None: ...

    @abc.abstractmethod
    async def get_by_name(
        self, object_type: str, name: str, workspace: str = DEFAULT_WORKSPACE
    ) -> ObjectRecord | None: ...

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
        """One page ordered by (created_at_ms, id); ``workspace=None`` lists every workspace.

        ``selector`` is a Kubernetes label selector, evaluated in SQL with bound parameters.
        """
        return await self._list(
            ListQuery(object_type, workspace, selector, limit, page_token, scope)
        )

    @abc.abstractmethod
    async def _list(self, query: ListQuery) -> Page:
        """``list``, with its arguments gathered in one record."""

    async def list_versions(
        self,
        object_type: str,
        scope: str,
        *,
        below: int | None = None,
        statuses: Sequence[str] | None = None,
        limit: int = 0,
    ) -> Sequence[ObjectRecord]:
        """The versioned rows of one scope (policy revisions), highest ``version`` first.

        ``below`` keeps versions strictly lower than it (the next page after the last version
        seen); ``statuses`` keeps rows whose status column is one of them. At most ``limit``
        rows (0 means the default page size). Served by the ``objects_version_uq`` and
        ``objects_scope_status_idx`` indexes, whatever the workspace.
        """
        return await self._list_versions(VersionQuery(object_type, scope, below, statuses, limit))

    @abc.abstractmethod
    async def _list_versions(self, query: VersionQuery) -> Sequence[ObjectRecord]:
        """``list_versions``, with its arguments gathered in one record."""

    @abc.abstractmethod
    async def count_by_status(self, object_type: str) -> dict[str | None, int]:
        """How many rows of ``object_type`` hold each status column value (None: unset).

        One aggregate query that returns a row per distinct status, not per object: what a
        metrics scrape can afford whatever the number of objects.
        """

    @abc.abstractmethod
    async def open(self, *, migrate_to: int | None = None) -> None:
        """Connect and apply migrations (up to ``migrate_to`` when given, for upgrade tests)."""

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The highest migration applied."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the database answers."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def _start_change_source(self) -> None:
        """Start feeding ``self._hub`` (called once, on the first subscription)."""

    # ----- shared behaviour ---------------------------------------------------------------

    async def retry_on_conflict(
        self,
        attempt: Attempt[R],
        *,
        object_type: str | None,
        retriable: tuple[type[Exception], ...] = (Conflict,),
        attempts: int | None = None,
    ) -> R:
        """``retry.retry_on_conflict`` with this store's policy, random source and observer,
        for the repositories' loops (a fence, a version-bound delete, a revision insert)."""
        return await retry_on_conflict(
            self.retry,
            self._rng,
            attempt,
            observer=self.observer,
            object_type=object_type,
            retriable=retriable,
            attempts=attempts,
        )

    def subscribe(self) -> Subscription:
        """A subscription to the change feed: ``async with store.subscribe() as sub``."""
        return Subscription(self._hub)

    def watch_row(self, id: str) -> RowWatch:
        """A watch on one row: ``async with store.watch_row(id) as watch``; ``watch.wait()``
        returns after a change to that row (or a wildcard hint), and only then."""
        return RowWatch(self._hub, id)

    async def get_version(self, object_type: str, scope: str, version: int) -> ObjectRecord | None:
        """The row holding ``version`` in ``scope``, or None."""
        rows = await self.list_versions(object_type, scope, below=version + 1, limit=1)
        return rows[0] if rows and rows[0].version == version else None

    async def get_message(self, message_type: type[M], id: str) -> M | None:
        record = await self.get(object_type_of(message_type), id)
        return None if record is None else decode(message_type, record)

    async def get_message_by_name(
        self, message_type: type[M], name: str, workspace: str = DEFAULT_WORKSPACE
    ) -> M | None:
        record = await self.get_by_name(object_type_of(message_type), name, workspace)
        return None if record is None else decode(message_type, record)

    async def list_messages(self, message_type: type[M], **kwargs: Any) -> tuple[Sequence[M], str]:
        """Decode one page of ``message_type``; returns the messages and the next page token."""
        page = await self.list(object_type_of(message_type), **kwargs)
        return [decode(message_type, record) for record in page.records], page.next_page_token

    async def create_message(self, message: M, *, status: str | None = None) -> M:
        """Insert ``message`` with ``MUST_CREATE``; returns it with version and times set.

        ``UniqueViolation`` means the id or the name (in its workspace) is taken. ``status``
        fills the row's status column (as ``update_message_cas(status=)`` keeps it).
        """
        created = type(message)()
        created.CopyFrom(message)
        meta: Any = created.metadata  # type: ignore[attr-defined]
        meta.workspace = meta.workspace or DEFAULT_WORKSPACE
        result = await self.put_if(
            object_type_of(type(message)),
            meta.id,
            meta.name or None,
            encode_for_storage(created),
            dict(meta.labels),
            WriteCondition.MUST_CREATE,
            meta.workspace,
            status=status,
        )
        meta.resource_version = result.resource_version
        meta.created_time.FromMilliseconds(result.created_at_ms)
        return created

    async def update_message_cas(
        self,
        message_type: type[M],
        id: str,
        mutate: Mutation[M],
        expected_version: int = 0,
        *,
        status: Callable[[M], str | None] | None = None,
    ) -> CasOutcome[M]:
        """Read, mutate a copy, and CAS-write ``id``; see the module docstring for the rules.

        Returns a ``CasOutcome``: the message as stored (with its new ``resource_version``) or
        unchanged when the mutation changed nothing, whether it was written, and the attempts.
        Raises ``NotFound`` when the row does not exist, ``Conflict`` when a client-driven
        version is stale or retries ran out, and whatever the mutation raises. ``status``, when
        given, derives the row's status column from the written message, so the column never
        disagrees with the payload.
        """
        object_type = object_type_of(message_type)
        if not expected_version:
            remembered = await self._update_from_memory(
                message_type, object_type, id, mutate, status
            )
            if remembered is not None:
                self.observer.cas_call(object_type, 1, exhausted=False)
                return CasOutcome(remembered, True, 1)
        try:
            (message, written), attempts = await retry_counting(
                self.retry,
                self._rng,
                self._cas_attempt,
                message_type,
                object_type,
                id,
                mutate,
                expected_version,
                status,
                observer=self.observer,
                object_type=object_type,
                # Client-driven mode makes one attempt: a stale version, never an exhausted
                # retry.
                attempts=1 if expected_version else self.retry.attempts,
            )
        except (Conflict, NotFound, InvalidMutation):
            raise
        except Exception:  # the mutation or the database aborted the attempt that raised
            self.observer.cas_attempt(object_type, "aborted")
            raise
        return CasOutcome(message, written, attempts)

    async def _update_from_memory(
        self,
        message_type: type[M],
        object_type: str,
        id: str,
        mutate: Mutation[M],
        status: Callable[[M], str | None] | None,
    ) -> M | None:
        """A first try without a read, from a row the backend remembers writing; the written
        message, or None (then the read-mutate-write attempts run). None here: nothing is
        remembered."""
        return None

    @abc.abstractmethod
    async def _cas_attempt(
        self,
        message_type: type[M],
        object_type: str,
        id: str,
        mutate: Mutation[M],
        expected_version: int,
        status: Callable[[M], str | None] | None = None,
    ) -> tuple[M, bool]:
        """One read-mutate-write; returns the message and whether it was written.

        Within ``_attempt_scope``: read the row (``NotFound`` when missing; ``Conflict`` when
        ``expected_version`` is set and differs), ``mutate`` the decoded message, refuse a
        changed id, name or workspace (``check_immutable_metadata``), write nothing when the
        stored encoding is unchanged (a ``noop`` attempt), else write at the version read
        (labels only when they changed, the status column from ``status``) and set the new
        version on the message. Reports ``written`` or ``noop`` to the observer.
        """

    def _attempt_scope(self) -> AbstractAsyncContextManager[None]:
        """Held around one CAS attempt's read and write; backends may pin a connection."""
        return contextlib.nullcontext()


def decode(message_type: type[M], record: ObjectRecord) -> M:
    """Decode a row's payload and hydrate ``metadata`` from the columns (``decode_row``)."""
    return decode_row(
        message_type,
        record.payload,
        record.resource_version,
        record.created_at_ms,
        record.workspace,
    )


def decode_row(
    message_type: type[M], payload: bytes, resource_version: int, created_at_ms: int, workspace: str
) -> M:
    """Decode a stored payload and hydrate ``metadata`` from its row's columns.

    ``resource_version`` and ``created_time`` are not kept in the stored payload; their
    columns are the truth (the creation time is the database's, so replicas with skewed clocks
    agree). The workspace is hydrated too, for rows written before workspaces existed.
    """
    message = message_type.FromString(payload)
    meta: Any = message.metadata  # type: ignore[attr-defined]
    meta.resource_version = resource_version
    created = meta.created_time
    created.seconds, milliseconds = divmod(created_at_ms, 1000)
    created.nanos = milliseconds * 1_000_000
    if workspace and not meta.workspace:
        meta.workspace = workspace
    return message


def encode_for_storage(message: Message) -> bytes:
    """The stored encoding: deterministic, without ``resource_version`` and ``created_time``
    (their columns hold them; readers hydrate both), so equal content encodes to equal bytes."""
    meta: Any = message.metadata  # type: ignore[attr-defined]
    version = meta.resource_version
    created = meta.created_time if meta.HasField("created_time") else None
    seconds, nanos = (created.seconds, created.nanos) if created is not None else (0, 0)
    meta.resource_version = 0
    meta.ClearField("created_time")
    try:
        return message.SerializeToString(deterministic=True)
    finally:
        meta.resource_version = version
        if created is not None:
            meta.created_time.seconds = seconds
            meta.created_time.nanos = nanos


def check_immutable_metadata(candidate: Message, id: str, name: str | None, workspace: str) -> None:
    """A mutation may not move a message to another id, name or workspace."""
    after: Any = candidate.metadata  # type: ignore[attr-defined]
    if after.id == id and after.name == (name or "") and after.workspace == workspace:
        return
    for field, value in (("id", id), ("name", name or ""), ("workspace", workspace)):
        if getattr(after, field) != value:
            raise InvalidMutation(f"metadata.{field} cannot be changed after creation")
