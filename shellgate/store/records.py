"""Plain records that cross the store boundary: rows, write results, pages, conditions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Generic, TypeVar

T = TypeVar("T")

DEFAULT_WORKSPACE = "default"


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    """One row of the ``objects`` table as read back from the database."""

    object_type: str
    id: str
    name: str | None
    workspace: str
    payload: bytes
    labels: dict[str, str]
    resource_version: int
    created_at_ms: int
    updated_at_ms: int
    scope: str | None = None
    version: int | None = None
    status: str | None = None


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What the writing statement itself returned (``RETURNING``), never a second read."""

    resource_version: int
    created_at_ms: int
    updated_at_ms: int


@dataclass(frozen=True, slots=True)
class WriteCondition:
    """The condition every production write names.

    ``WriteCondition.MUST_CREATE`` inserts and fails with ``UniqueViolation`` when the id or
    the (type, workspace, name) already exists. ``WriteCondition.match(v)`` updates only while
    the row's ``resource_version`` is still ``v`` and raises ``Conflict`` otherwise.
    """

    expected_version: int | None

    MUST_CREATE: ClassVar[WriteCondition]

    @classmethod
    def match(cls, version: int) -> WriteCondition:
        if version < 1:
            raise ValueError(f"a resource_version to match must be >= 1, got {version}")
        return cls(expected_version=version)

    @property
    def is_create(self) -> bool:
        return self.expected_version is None


WriteCondition.MUST_CREATE = WriteCondition(expected_version=None)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a key-paged list; ``next_page_token`` is empty on the last page."""

    records: list[ObjectRecord] = field(default_factory=list)
    next_page_token: str = ""


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """A hint that a row changed. Watchers re-read the row; the event is not the state.

    ``object_type`` and ``id`` are None for a wildcard hint ("something changed, re-read what
    you watch"), which the SQLite feed emits for writes made by other processes.
    """

    object_type: str | None
    id: str | None
    resource_version: int | None = None
    deleted: bool = False
    committed_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class CasOutcome(Generic[T]):
    """What ``update_message_cas`` did: the message as it now stands, whether this call wrote
    it, and how many attempts it took.

    ``written`` is False when the mutation changed nothing (no version bump, no notification);
    callers that report "attached", "applied" or count repairs read it here rather than from
    flags on the mutation or version comparisons.
    """

    message: T
    written: bool
    attempts: int


@dataclass(frozen=True, slots=True)
class StoreTimeouts:
    """How long a Postgres statement may run and how long a caller waits for a connection,
    in seconds; past either the call is ``StoreUnavailable`` rather than a hang. (SQLite's
    lock wait is its URL's ``busy_timeout_ms``.)"""

    statement: float = 30.0
    acquire: float = 10.0
