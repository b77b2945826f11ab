"""``WrittenRows``: the rows this store last wrote by CAS, to start the next update from.

Kubernetes' storage layer does the same (``GuaranteedUpdate`` with a cached existing
object): an update of a row this process wrote last starts from what it wrote instead of
reading it again, and the write's own condition tells whether that was still the row. On
Postgres that saves one of the attempt's two round trips; on SQLite one statement.

Nothing here decides correctness. A remembered row is only a guess at the current one: the
write made from it is conditioned on the version *and* the creation time it names (so a row
deleted and created again under the same id, which restarts at version 1, is never taken
for the remembered one), and when the guess was wrong the write matches nothing and the
update goes on as if there had been no guess (``SqlStore._update_from_memory``). Entries are
forgotten when this store writes the row otherwise, when the change feed reports another
version of it, and on a wildcard hint; the oldest go first past ``limit``.
"""

from __future__ import annotations

import collections
from typing import Any

RowKey = tuple[str, str]
"""(object_type, id)"""

DEFAULT_LIMIT = 4096
"""Rows remembered at most."""
DEFAULT_BYTES = 8 * 1024 * 1024
"""Payload bytes remembered at most (a sandbox's policy may make a row 256 KiB); the oldest
rows go first past either bound."""


class WrittenRows:
    """An LRU of CAS-read-shaped rows: (payload, version, name, workspace, status, created)."""

    def __init__(self, limit: int = DEFAULT_LIMIT, limit_bytes: int = DEFAULT_BYTES) -> None:
        self._limit = limit
        self._limit_bytes = limit_bytes
        self._bytes = 0
        self._rows: collections.OrderedDict[RowKey, tuple[Any, ...]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: RowKey) -> tuple[Any, ...] | None:
        return self._rows.get(key)

    def remember(self, key: RowKey, row: tuple[Any, ...]) -> None:
        self.forget(key)
        size = len(row[0])
        if size > self._limit_bytes:
            return
        rows = self._rows
        rows[key] = row
        self._bytes += size
        while len(rows) > self._limit or self._bytes > self._limit_bytes:
            _key, oldest = rows.popitem(last=False)
            self._bytes -= len(oldest[0])

    def forget(self, key: RowKey) -> None:
        row = self._rows.pop(key, None)
        if row is not None:
            self._bytes -= len(row[0])

    def forget_if(self, key: RowKey, row: tuple[Any, ...]) -> None:
        """Forget ``row`` if it is still the one kept (not one remembered since)."""
        if self._rows.get(key) is row:
            self.forget(key)

    def forget_unless(self, key: RowKey, version: int | None) -> None:
        """Another version of the row was reported: forget it unless it is the one kept."""
        row = self._rows.get(key)
        if row is not None and row[1] != version:
            self.forget(key)

    def clear(self) -> None:
        self._rows.clear()
        self._bytes = 0
