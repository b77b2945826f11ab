"""A command run inside a local sandbox: a child process with pipes or a pseudo-terminal.

**No shell.** The argument vector is executed as given (``execvpe`` semantics, the program
looked up on the sandbox's ``PATH``); a caller who wants a shell asks for one (``sh -c``).

**Process group.** Every command starts a new session, so it leads its own process group and
a kill reaches everything it started. The group lives exactly as long as the command: when the
command exits, whatever remains of its group is killed (a backgrounded child would otherwise
hold the output open and the exec would never end). The driver kills every open session of a
sandbox when the sandbox stops, is deleted, its main process exits, or the gateway closes.

**Pseudo-terminal.** With ``tty`` the command's stdin, stdout and stderr are the slave side
of a new pty that becomes its controlling terminal (so the kernel delivers SIGWINCH to it when
the window is resized), and everything it writes arrives as stdout. Making a terminal
controlling needs an ``ioctl`` between ``setsid`` and ``exec``; a tiny helper interpreter
does it rather than a ``preexec_fn``, which is unsafe in a process with other threads (gRPC).

**Bounded.** Output is read in chunks of at most ``CHUNK_BYTES`` and handed over through a
queue of ``QUEUE_CHUNKS``: a reader that does not keep up stops the command's writes (the pipe
fills) instead of growing the gateway's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import signal
import struct
import sys
import termios
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Literal

from shellgate.controller.drivers.exec import CommandNotStarted, ExecOutput, ExecSpec

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
QUEUE_CHUNKS = 16
EOF_CHARACTER = b"\x04"  # a terminal's end of input (^D at the start of a line)

# Runs in the child after setsid: make fd 0 (the pty's slave) the controlling terminal, then
# become the command. Exit status 127 with a message when the program cannot be executed.
_TTY_HELPER = (
    "import fcntl,os,sys,termios\n"
    "fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "try:\n"
    "    os.execvp(sys.argv[1], sys.argv[1:])\n"
    "except OSError as e:\n"
    "    sys.stderr.write(f'exec {sys.argv[1]}: {e.strerror}\\r\\n')\n"
    "    os._exit(127)\n"
)


class LocalExecSession:
    """One running command (see the module docstring); implements ``ExecSession``."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        *,
        stdin_fd: int,
        outputs: list[tuple[Literal["stdout", "stderr"], int]],
        pty_fd: int | None,
    ) -> None:
        self._process = process
        self._stdin_fd: int | None = stdin_fd
        self._pty_fd = pty_fd
        self._queue: asyncio.Queue[ExecOutput | None] = asyncio.Queue(QUEUE_CHUNKS)
        self._readers = [
            asyncio.create_task(self._pump(stream, fd), name=f"exec-{process.pid}-{stream}")
            for stream, fd in outputs
        ]
        self._reaper = asyncio.create_task(self._reap(), name=f"exec-{process.pid}-reaper")
        self._returncode: int | None = None
        self._at_line_start = True

    @property
    def pid(self) -> int:
        return self._process.pid

    async def output(self) -> AsyncIterator[ExecOutput]:
        """Chunks as the command produces them, until every output stream has ended.

        Closing it early (the caller went away) stops the readers: with nobody taking chunks
        off the full queue they would wait forever, and so would the reaping of the command.
        """
        open_streams = len(self._readers)
        try:
            while open_streams:
                item = await self._queue.get()
                if item is None:
                    open_streams -= 1
                else:
                    yield item
        finally:
            if open_streams:
                for reader in self._readers:
                    reader.cancel()

    async def write_stdin(self, data: bytes) -> None:
        if self._stdin_fd is None or not data:
            return
        try:
            await _write_all(self._stdin_fd, data)
            self._at_line_start = data.endswith((b"\n", b"\r"))
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.EIO, errno.EBADF):
                raise
            self._close_stdin_fd()  # the command stopped reading: drop further input

    async def close_stdin(self) -> None:
        if self._stdin_fd is None:
            return
        if self._pty_fd is not None:
            # A terminal has no half-close: end of input is the EOF character. It is read as
            # end of input only at the start of a line; elsewhere it first ends the line.
            eof = EOF_CHARACTER if self._at_line_start else EOF_CHARACTER * 2
            with contextlib.suppress(OSError):
                await _write_all(self._stdin_fd, eof)
            self._stdin_fd = None  # the master stays open for output; closed in _finish
            return
        self._close_stdin_fd()

    async def resize(self, cols: int, rows: int) -> None:
        if self._pty_fd is not None and cols and rows:
            with contextlib.suppress(OSError):
                set_window_size(self._pty_fd, cols, rows)

    def on_exit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the command is reaped (at once if it already is)."""
        self._reaper.add_done_callback(lambda _task: callback())

    async def wait(self) -> int:
        """The exit status; a death by signal N reads as 128+N, as a shell reports it."""
        await asyncio.shield(self._reaper)
        assert self._returncode is not None
        return self._returncode

    async def kill(self) -> None:
        """SIGKILL the command's group and wait until it is reaped; safe after exit."""
        if self._process.returncode is None:  # not reaped: the pid and pgid are still ours
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, signal.SIGKILL)
        await asyncio.shield(self._reaper)

    async def _reap(self) -> None:
        returncode = await self._process.wait()
        # The leader is reaped; what is left of its group goes with it (see the docstring).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._returncode = returncode if returncode >= 0 else 128 - returncode
        self._close_stdin_fd()
        # Output already written stays readable; readers end at EOF (pipes) or EIO (pty).
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self._pty_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._pty_fd)
            self._pty_fd = None

    async def _pump(self, stream: Literal["stdout", "stderr"], fd: int) -> None:
        try:
            async for chunk in read_chunks(fd):
                await self._queue.put(ExecOutput(stream, chunk))
        except OSError as exc:
            log.warning("exec %d: reading %s failed: %s", self._process.pid, stream, exc)
        finally:
            if fd != self._pty_fd:
                os.close(fd)
        await self._queue.put(None)  # not when cancelled: then nobody reads the queue

    def _close_stdin_fd(self) -> None:
        fd, self._stdin_fd = self._stdin_fd, None
        if fd is not None and fd != self._pty_fd:
            with contextlib.suppress(OSError):
                os.close(fd)


async def start_exec(
    spec: ExecSpec, *, workdir: Path, environment: Mapping[str, str]
) -> LocalExecSession:
    """Start ``spec.command`` in ``workdir`` with exactly ``environment``."""
    _require_runnable(spec, workdir, environment.get("PATH", os.defpath))
    if spec.tty:
        return await _start_with_pty(spec, workdir, environment)
    return await _start_with_pipes(spec, workdir, environment)


async def _start_with_pipes(
    spec: ExecSpec, workdir: Path, environment: Mapping[str, str]
) -> LocalExecSession:
    stdin_read, stdin_write = os.pipe()
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    child_ends = (stdin_read, out_write, err_write)
    try:
        process = await asyncio.create_subprocess_exec(
            *spec.command,
            cwd=workdir,
            env=dict(environment),
            stdin=stdin_read,
            stdout=out_write,
            stderr=err_write,
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:
        for fd in (stdin_write, out_read, err_read):
            os.close(fd)
        raise CommandNotStarted(f"cannot run {spec.command[0][:64]!r}: {_reason(exc)}") from exc
    finally:
        for fd in child_ends:
            os.close(fd)
    return LocalExecSession(
        process,
        stdin_fd=stdin_write,
        outputs=[("stdout", out_read), ("stderr", err_read)],
        pty_fd=None,
    )


async def _start_with_pty(
    spec: ExecSpec, workdir: Path, environment: Mapping[str, str]
) -> LocalExecSession:
    master, slave = os.openpty()
    try:
        set_window_size(master, spec.cols or 80, spec.rows or 24)
        env = dict(environment)
        env.setdefault("TERM", "xterm-256color")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            "-c",
            _TTY_HELPER,
            *spec.command,
            cwd=workdir,
            env=env,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
    except (OSError, ValueError) as exc:
        os.close(master)
        raise CommandNotStarted(f"cannot run {spec.command[0][:64]!r}: {_reason(exc)}") from exc
    finally:
        os.close(slave)
    return LocalExecSession(process, stdin_fd=master, outputs=[("stdout", master)], pty_fd=master)


def _require_runnable(spec: ExecSpec, workdir: Path, path: str) -> None:
    """Refuse what cannot start before anything is spawned (with a pty the failure would
    otherwise only show as the helper's exit status)."""
    if not workdir.is_dir():
        raise CommandNotStarted(f"working directory {spec.workdir[:64]!r} does not exist")
    if not _runnable(spec.command[0], workdir, path):
        raise CommandNotStarted(f"cannot run {spec.command[0][:64]!r}: not found or not executable")


def _runnable(program: str, workdir: Path, path: str) -> bool:
    """Whether ``program`` names an executable file: a path (relative to the working
    directory) when it contains '/', else a name looked up on the sandbox's ``PATH``."""
    if "/" in program:
        candidate = workdir / program
        return candidate.is_file() and os.access(candidate, os.X_OK)
    return shutil.which(program, path=path) is not None


def set_window_size(fd: int, cols: int, rows: int) -> None:
    """TIOCSWINSZ on the pty; the kernel then sends SIGWINCH to the terminal's foreground
    process group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def read_chunks(fd: int) -> AsyncIterator[bytes]:
    """Read ``fd`` without blocking the loop until EOF; a pty's master reports the end of
    its slave side as EIO, which is EOF here."""
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = os.read(fd, CHUNK_BYTES)
        except BlockingIOError:
            await _ready(loop, fd, loop.add_reader, loop.remove_reader)
            continue
        except OSError as exc:
            if exc.errno == errno.EIO:
                return
            raise
        if not data:
            return
        yield data


async def _write_all(fd: int, data: bytes) -> None:
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            await _ready(loop, fd, loop.add_writer, loop.remove_writer)
            continue
        view = view[written:]


async def _ready(
    loop: asyncio.AbstractEventLoop,
    fd: int,
    add: Callable[[int, Callable[[], None]], None],
    remove: Callable[[int], object],
) -> None:
    """Wait until the loop reports ``fd`` readable (or writable)."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    add(fd, wake)
    try:
        await ready
    finally:
        remove(fd)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)
