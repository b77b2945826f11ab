"""``WrittenRows`` stays within its bounds: rows and payload bytes."""

from __future__ import annotations

from shellgate.store.written_rows import WrittenRows


def row(size: int, version: int = 1) -> tuple[object, ...]:
    return (b"x" * size, version, "name", "default", None, 0)


def test_the_oldest_rows_go_first_past_the_byte_budget() -> None:
    rows = WrittenRows(limit=100, limit_bytes=1000)
    for n in range(5):
        rows.remember(("sandbox", str(n)), row(300))
    assert len(rows) == 3
    assert rows.get(("sandbox", "0")) is None and rows.get(("sandbox", "4")) is not None


def test_a_row_larger_than_the_budget_is_not_kept_and_replaces_nothing_stale() -> None:
    rows = WrittenRows(limit=100, limit_bytes=1000)
    rows.remember(("sandbox", "a"), row(10, version=1))
    rows.remember(("sandbox", "a"), row(5000, version=2))  # too big: the old one is no guess
    assert rows.get(("sandbox", "a")) is None
    assert len(rows) == 0


def test_forget_if_keeps_a_row_remembered_since() -> None:
    rows = WrittenRows()
    tried = row(10, version=2)
    rows.remember(("sandbox", "a"), tried)
    newer = row(10, version=3)
    rows.remember(("sandbox", "a"), newer)
    rows.forget_if(("sandbox", "a"), tried)
    assert rows.get(("sandbox", "a")) is newer
    rows.forget_if(("sandbox", "a"), newer)
    assert rows.get(("sandbox", "a")) is None
