"""Typed store errors.

Callers branch on the class of an error, never on its text. The backends translate
database-driver exceptions into these at the boundary (``raise ... from exc``), so nothing
above ``store/`` ever sees an ``sqlite3`` or ``asyncpg`` exception type.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the store raises."""


class ConfigurationError(StoreError):
    """The store was configured wrongly (for example an unsupported database URL)."""


class MigrationError(StoreError):
    """A schema migration could not be applied."""


class NotFound(StoreError):
    """The object does not exist (any more)."""

    def __init__(self, object_type: str, object_id: str) -> None:
        super().__init__(f"{object_type} {object_id!r} not found")
        self.object_type = object_type
        self.object_id = object_id


class Conflict(StoreError):
    """A compare-and-swap lost: the row's ``resource_version`` was not the expected one.

    ``current_resource_version`` is the version the store saw when the write lost, or None
    when it is not known.
    """

    def __init__(self, current_resource_version: int | None) -> None:
        shown = "unknown" if current_resource_version is None else current_resource_version
        super().__init__(
            "resource version conflict: expected version does not match current "
            f"(current resource_version: {shown})"
        )
        self.current_resource_version = current_resource_version


class UniqueViolation(StoreError):
    """An insert collided with a unique index; ``constraint`` names the index when known."""

    def __init__(self, constraint: str | None, detail: str | None = None) -> None:
        text = "unique violation" + (f" on {constraint}" if constraint else "")
        super().__init__(text if not detail else f"{text}: {detail}")
        self.constraint = constraint
        self.detail = detail


class StoreUnavailable(StoreError):
    """The database cannot be reached. Retry later; the connection pool recovers by itself."""


class InvalidMutation(StoreError):
    """A mutation tried to change what is immutable after create (id, name or workspace)."""


class InvalidSelector(StoreError, ValueError):
    """A label selector did not parse; ``field`` is the offending requirement."""


class InvalidPageToken(StoreError, ValueError):
    """A page token was not one this store issued."""


class InvalidValue(StoreError, ValueError):
    """The database refused a value of the request (out of range, not encodable)."""


QUOTE_LIMIT = 64


def quoted(value: str, limit: int = QUOTE_LIMIT) -> str:
    """``repr`` of at most ``limit`` characters of ``value``, marked when cut.

    Error messages travel in gRPC trailers, which clients bound to a few KiB: quoting a
    caller's input whole would replace the real status with RESOURCE_EXHAUSTED, and would
    let one request write megabytes into the logs.
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} characters)"
