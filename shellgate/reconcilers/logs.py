"""Which log lines GetSandboxLogs answers: filter, order and bound, as pure functions.

Lines come from two sources: ``sandbox`` (the sandbox's main process, from the driver) and
``gateway`` (the gateway's platform events about the sandbox). The answer is chronological
(oldest first), holds only lines at or after ``since_ms``, from the asked sources, at or
above ``min_level``, and at most the newest ``limit`` lines and ``max_bytes`` of messages, so
a sandbox that logged a lot cannot make one answer huge.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol, TypeVar

from shellgate.reconcilers.errors import FieldViolation, InvalidArgument

SOURCES = ("gateway", "sandbox")
LEVELS = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")
_ALIASES = {"WARNING": "WARN", "FATAL": "ERROR", "CRITICAL": "ERROR"}


class LogEntry(Protocol):
    @property
    def timestamp_ms(self) -> int: ...
    @property
    def level(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def message(self) -> str: ...


E = TypeVar("E", bound=LogEntry)


def level_rank(level: str) -> int:
    """The level's place in ``LEVELS``; an unknown level ranks as INFO."""
    name = _ALIASES.get(level.upper(), level.upper())
    return LEVELS.index(name) if name in LEVELS else LEVELS.index("INFO")


def parse_min_level(level: str) -> int:
    """``min_level`` as a rank; empty means every level; an unknown name is refused."""
    if not level:
        return 0
    name = _ALIASES.get(level.upper(), level.upper())
    if name not in LEVELS:
        raise InvalidArgument.single(
            "min_level", f"min_level must be one of {', '.join(LEVELS)} (got {level[:32]!r})"
        )
    return LEVELS.index(name)


def parse_sources(sources: Sequence[str], max_entries: int) -> frozenset[str]:
    """The asked sources; none (or ``all``) means every source; an unknown one is refused."""
    if len(sources) > max_entries:
        raise InvalidArgument.single(
            "sources", f"sources exceeds maximum entries of {max_entries} (got {len(sources)})"
        )
    wanted = {s.lower() for s in sources}
    if not wanted or "all" in wanted:
        return frozenset(SOURCES)
    unknown = sorted(wanted - set(SOURCES))
    if unknown:
        violation = FieldViolation(
            "sources", f"sources must be gateway, sandbox or all (got {unknown[0][:32]!r})"
        )
        raise InvalidArgument([violation])
    return frozenset(wanted)


def select_lines(
    lines: Iterable[E],
    *,
    since_ms: int,
    sources: frozenset[str],
    min_rank: int,
    limit: int,
    max_bytes: int,
) -> tuple[list[E], int]:
    """The newest matching lines, oldest first, and how many matched before the bounds."""
    matching = [
        line
        for line in lines
        if line.timestamp_ms >= since_ms
        and line.source in sources
        and level_rank(line.level) >= min_rank
    ]
    matching.sort(key=lambda line: line.timestamp_ms)  # stable: same-time lines keep order
    kept: list[E] = []
    size = 0
    for line in reversed(matching[-limit:] if limit else []):
        size += len(line.message.encode())
        if size > max_bytes:
            break
        kept.append(line)
    kept.reverse()
    return kept, len(matching)
