"""Running a command inside a sandbox, and reading its logs: what a driver offers.

The gRPC handlers (ExecSandbox, ExecSandboxInteractive, GetSandboxLogs) speak protobuf and
decide authorization, phase checks and timeouts; a driver only knows how to start a process
in its own world (a child process for the local driver, ``pods/exec`` for Kubernetes) and
how to stream its bytes. This module is that seam, so both drivers are driven and tested the
same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.base import DriverError


class CommandNotStarted(DriverError):
    """The command cannot run as asked (no such program or working directory, the sandbox
    is not running here): retrying the same request will not help, unlike other driver
    failures, so the API answers FAILED_PRECONDITION rather than UNAVAILABLE."""


@dataclass(frozen=True, slots=True)
class ExecSpec:
    """One command to run, already validated by the handler."""

    command: tuple[str, ...]
    workdir: str = ""
    environment: dict[str, str] = field(default_factory=dict)
    tty: bool = False
    cols: int = 0
    rows: int = 0
    login_shell: bool = True
    """The reference wraps the command in a login shell unless ``no_login_shell``; a driver
    may honour it or ignore it, but never adds a shell the caller did not ask for."""
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class ExecOutput:
    """A chunk of output as the process produced it (bounded by the driver)."""

    stream: Literal["stdout", "stderr"]
    data: bytes


class ExecSession(Protocol):
    """A running command. ``output()`` ends when the process's streams close; ``wait()``
    then returns its exit status. ``kill()`` is idempotent and safe after exit."""

    def output(self) -> AsyncIterator[ExecOutput]: ...

    async def write_stdin(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    async def resize(self, cols: int, rows: int) -> None: ...

    async def wait(self) -> int: ...

    async def kill(self) -> None: ...


@dataclass(frozen=True, slots=True)
class LogQuery:
    lines: int = 0
    """At most this many of the newest lines (0: the driver's bound)."""
    since_ms: int = 0
    sources: tuple[str, ...] = ()
    min_level: str = ""


@dataclass(frozen=True, slots=True)
class LogLine:
    timestamp_ms: int
    level: str
    source: str
    message: str
    target: str = ""


@runtime_checkable
class ExecDriver(Protocol):
    """What a compute driver adds to run commands and read logs in its sandboxes (checked
    at run time, so a driver without it answers UNIMPLEMENTED instead of failing)."""

    async def open_exec(self, sandbox: openshell_pb2.Sandbox, spec: ExecSpec) -> ExecSession:
        """Start ``spec`` in the sandbox; raises ``DriverError`` when it cannot start."""

    async def read_logs(self, sandbox: openshell_pb2.Sandbox, query: LogQuery) -> list[LogLine]:
        """The sandbox's main-process output, oldest first, bounded."""
