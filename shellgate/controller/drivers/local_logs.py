"""A local sandbox's main-process output: captured line by line into a bounded log file.

The process writes into pipes; the driver reads them and appends one record per line,
``<unix ms> <stdout|stderr> <text>``, to ``sandbox.log``, so GetSandboxLogs can filter by time
and merge with the gateway's events in order. Writing the process's output straight into the
file (as before) could neither timestamp it nor bound it: a chatty sandbox filled the disk.

**Bounds.** A line longer than ``MAX_LINE_BYTES`` is split into several records. When the file
would grow past ``MAX_FILE_BYTES`` it is renamed to ``sandbox.log.1`` (replacing the previous
one) and a new file is started, so one sandbox keeps at most twice that on disk, and a read
parses at most that much.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from shellgate.controller.drivers.exec import LogLine
from shellgate.controller.drivers.local_exec import read_chunks

log = logging.getLogger(__name__)

LOG_FILE = "sandbox.log"
MAX_FILE_BYTES = 1024 * 1024
MAX_LINE_BYTES = 16 * 1024
STREAM_LEVELS = {"stdout": "INFO", "stderr": "WARN"}
"""A process's own output has no level; stderr reads as WARN so ``min_level`` can pick it."""


class SandboxLogFile:
    """Appends timestamped records for one sandbox, rotating at ``MAX_FILE_BYTES``."""

    def __init__(self, directory: Path, clock_ms: Callable[[], int]) -> None:
        self.path = directory / LOG_FILE
        self._clock_ms = clock_ms

    async def capture(self, stream: str, fd: int) -> None:
        """Record everything the process writes to ``fd`` until EOF, then close it."""
        pending = b""
        try:
            async for chunk in read_chunks(fd):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                while len(pending) > MAX_LINE_BYTES:
                    lines.append(pending[:MAX_LINE_BYTES])
                    pending = pending[MAX_LINE_BYTES:]
                self._append(stream, lines)
            if pending:
                self._append(stream, [pending])
        except OSError as exc:
            log.warning("%s: cannot capture %s: %s", self.path.parent.name, stream, exc)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _append(self, stream: str, lines: list[bytes]) -> None:
        if not lines:
            return
        now = self._clock_ms()
        records = b"".join(
            f"{now} {stream} ".encode() + part + b"\n"
            for line in lines
            for part in _split(line.rstrip(b"\r"))
        )
        try:
            if _size(self.path) + len(records) > MAX_FILE_BYTES:
                self.path.replace(self.path.with_name(LOG_FILE + ".1"))
            with open(self.path, "ab") as out:
                out.write(records)
        except OSError as exc:
            log.warning("%s: cannot write its log: %s", self.path.parent.name, exc)

    async def read(self) -> list[LogLine]:
        """Every record kept (the rotated file first), oldest first."""
        return await asyncio.to_thread(read_records, self.path)


def read_records(path: Path) -> list[LogLine]:
    lines: list[LogLine] = []
    for part in (path.with_name(LOG_FILE + ".1"), path):
        try:
            data = part.read_bytes()[-MAX_FILE_BYTES * 2 :]
        except OSError:
            continue
        lines.extend(_parse(raw) for raw in data.splitlines() if raw)
    return lines


def _parse(raw: bytes) -> LogLine:
    """One record; a line not in the record format (a file from an older version) is kept
    as stdout at time 0, so it sorts first."""
    stamp, _, rest = raw.partition(b" ")
    stream, _, text = rest.partition(b" ")
    name = stream.decode(errors="replace")
    if not stamp.isdigit() or name not in STREAM_LEVELS:
        stamp, name, text = b"0", "stdout", raw
    return LogLine(
        timestamp_ms=int(stamp),
        level=STREAM_LEVELS[name],
        source="sandbox",
        target=name,
        message=text.decode(errors="replace"),
    )


def _split(line: bytes) -> list[bytes]:
    return [line[i : i + MAX_LINE_BYTES] for i in range(0, len(line), MAX_LINE_BYTES)] or [b""]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
