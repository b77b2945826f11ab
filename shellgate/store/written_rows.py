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
"""Rows remembered: a few hundred bytes each (the payload), about 2 MB when full."""


class WrittenRows:
    """An LRU of CAS-read-shaped rows: (payload, version, name, workspace, status, created)."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self._limit = limit
        self._rows: collections.OrderedDict[RowKey, tuple[Any, ...]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: RowKey) -> tuple[Any, ...] | None:
        return self._rows.get(key)

    def remember(self, key: RowKey, row: tuple[Any, ...]) -> None:
        rows = self._rows
        rows[key] = row
        rows.move_to_end(key)
        if len(rows) > self._limit:
            rows.popitem(last=False)

    def forget(self, key: RowKey) -> None:
        self._rows.pop(key, None)

    def forget_unless(self, key: RowKey, version: int | None) -> None:
        """Another version of the row was reported: forget it unless it is the one kept."""
        row = self._rows.get(key)
        if row is not None and row[1] != version:
            del self._rows[key]

    def clear(self) -> None:
        self._rows.clear()
