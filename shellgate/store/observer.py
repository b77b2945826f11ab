"""Hooks through which the store reports what it did, without importing a metrics library.

``controller/`` plugs a Prometheus implementation in; the default does nothing. Labels are
closed sets: object types, operation names and results, never ids or names.
"""

from __future__ import annotations

from typing import Literal, Protocol

CasResult = Literal["written", "noop", "conflict", "aborted", "stale"]
"""How a CAS attempt ended. ``stale``: the first try of an update, made from the row the
store last wrote without reading it (written_rows.py), found that row changed; the update
went on to read it. Not an attempt of the retry rule."""


class StoreObserver(Protocol):
    def cas_attempt(self, object_type: str, result: CasResult) -> None:
        """One attempt of ``update_message_cas`` ended with ``result``."""

    def cas_call(self, object_type: str, attempts: int, exhausted: bool) -> None:
        """One call of ``update_message_cas`` finished after ``attempts`` attempts."""

    def operation(
        self, backend: str, operation: str, seconds: float, available: bool | None
    ) -> None:
        """One database operation (get, put_if, delete_if, list, ...) took ``seconds`` and
        got an answer from the database (``available``; a conflict or a missing row is an
        answer too) or failed for want of one (``StoreUnavailable``); None when it ended
        without telling either (cancelled). Readiness is judged from these real outcomes,
        not only from a periodic ping. One call per operation:
        on the path of every update, each call is paid for (bench/profile_cas.py)."""


class NullObserver:
    """The default observer: records nothing."""

    def cas_attempt(self, object_type: str, result: CasResult) -> None:
        return None

    def cas_call(self, object_type: str, attempts: int, exhausted: bool) -> None:
        return None

    def operation(
        self, backend: str, operation: str, seconds: float, available: bool | None
    ) -> None:
        return None
