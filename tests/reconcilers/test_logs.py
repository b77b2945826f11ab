"""Which log lines GetSandboxLogs answers: sources, levels, time, order and bounds."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from shellgate.reconcilers.errors import InvalidArgument
from shellgate.reconcilers.logs import (
    SOURCES,
    level_rank,
    parse_min_level,
    parse_sources,
    select_lines,
)


@dataclass(frozen=True)
class Line:
    timestamp_ms: int
    level: str
    source: str
    message: str


LINES = [
    Line(30, "INFO", "sandbox", "c"),
    Line(10, "WARN", "gateway", "a"),
    Line(20, "INFO", "sandbox", "b"),
    Line(20, "ERROR", "sandbox", "b2"),
    Line(40, "DEBUG", "sandbox", "d"),
]
ALL = frozenset(SOURCES)


def select(**overrides: object) -> tuple[list[str], int]:
    options: dict[str, object] = {
        "since_ms": 0,
        "sources": ALL,
        "min_rank": 0,
        "limit": 100,
        "max_bytes": 1 << 20,
    }
    options.update(overrides)
    kept, total = select_lines(LINES, **options)  # type: ignore[arg-type]
    return [line.message for line in kept], total


def test_lines_come_oldest_first_and_equal_times_keep_their_order() -> None:
    assert select() == (["a", "b", "b2", "c", "d"], 5)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"since_ms": 20}, (["b", "b2", "c", "d"], 4)),
        ({"sources": frozenset({"gateway"})}, (["a"], 1)),
        ({"sources": frozenset({"sandbox"})}, (["b", "b2", "c", "d"], 4)),
        ({"min_rank": parse_min_level("warn")}, (["a", "b2"], 2)),
        ({"min_rank": parse_min_level("INFO")}, (["a", "b", "b2", "c"], 4)),
        ({"limit": 2}, (["c", "d"], 5)),  # the newest two, still oldest first
        ({"max_bytes": 4}, (["b2", "c", "d"], 5)),  # the newest that fit
        ({"max_bytes": 3}, (["c", "d"], 5)),  # "b2" would make 4 bytes
        ({"max_bytes": 0}, ([], 5)),
    ],
)
def test_filters_and_bounds(overrides: dict[str, object], expected: tuple[list[str], int]) -> None:
    assert select(**overrides) == expected


def test_levels_and_their_aliases() -> None:
    assert parse_min_level("") == 0
    assert parse_min_level("warning") == parse_min_level("WARN") == level_rank("WARN")
    assert level_rank("something-else") == level_rank("INFO")
    with pytest.raises(InvalidArgument) as refused:
        parse_min_level("LOUD")
    assert refused.value.violations[0].field == "min_level"


def test_sources() -> None:
    assert parse_sources([], 8) == ALL
    assert parse_sources(["all"], 8) == ALL
    assert parse_sources(["Gateway"], 8) == {"gateway"}
    for bad in (["kernel"], ["sandbox"] * 9):
        with pytest.raises(InvalidArgument) as refused:
            parse_sources(bad, 8)
        assert refused.value.violations[0].field == "sources"
