"""The local compute driver: every sandbox is a child process of the gateway.

This is the development driver behind ``make run``. **It gives no isolation at all**: a sandbox
runs as the gateway's user, sees the whole filesystem and network, and may signal any process
of that user. Never run untrusted code with it.

**On disk.** Each sandbox has a directory ``state_dir/sandboxes/<id>`` (mode 0700), which is
also the process's working directory and ``HOME``. It holds:

- ``owner``: the replica id that created the sandbox, claimed with an exclusive create. Several
  replicas may share one ``state_dir``, and no replica acts on another's sandboxes: for them
  ``get_sandbox`` returns None, ``list_sandboxes`` and ``events`` leave them out,
  ``stop_sandbox``/``start_sandbox``/``delete_sandbox`` raise ``DriverNotOwner`` (the owner
  follows the store instead), and ``create_sandbox`` succeeds without doing anything (the
  sandbox exists under that id). ``owns`` is true only on positive evidence (the sandbox
  runs here, or its ``owner`` file names this replica): the absence of a file proves nothing
  when replicas have separate state directories. The store row records the owner too
  (``openshell.ai/owner-replica``), and that is what the reconcile loop goes by.
- ``sandbox.pb``: the ``Sandbox`` message given at create, so the same command can run again
  on ``start_sandbox`` and after a gateway restart.
- ``state``: ``running``, ``stopped`` or ``exited <code>``, what a restarted driver restores.
- ``run``: the token of the latest process, written and fsynced *before* it is spawned. The
  process carries it in its environment (``SHELLGATE_SANDBOX_RUN``), so a restarted driver
  finds what a predecessor killed between spawning and recording the pid left running.
- ``pid``: ``<pid> <start time>``; the start time (Linux ``/proc``) tells a process left by a
  previous run apart from an unrelated one that reused the pid.
- ``sandbox.log``: the process's stdout and stderr, one timestamped record per line, rotated
  to ``sandbox.log.1`` at 1 MiB (``local_logs``); what GetSandboxLogs reads.

**Environment.** A sandbox process (the main one and every exec) gets nothing of the gateway's
environment but ``PATH`` and ``LANG``, with ``HOME`` set to its working directory; the spec's
template environment, then its environment, then (for an exec) the request's, go on top.
Anything else the gateway holds (its database URL, cloud credentials) stays out. ``PATH``
starts with the directory of the gateway's own interpreter, so ``python`` in a sandbox is the
gateway's Python (in a virtualenv, the one with ``cloudpickle``, which the SDK's
``exec_python`` needs).

**Exec.** ``open_exec`` runs a command in a running sandbox's working directory with that
environment (``local_exec``: no shell, its own process group, optionally a pseudo-terminal).
Its sessions are killed with the sandbox: on stop, delete, close, and when the main process
exits. ``ExecSpec.login_shell`` is not honoured: a login shell would only add the system
profile, which resets ``PATH`` and so would lose the gateway's Python. An exec carries the
sandbox's run token, so a restarted driver kills those left behind too.

**Processes.** Each process runs in a new session, so it leads its own process group, and
signals go to the whole group: a shell's children go with it. Exits are reaped on the event
loop through a pidfd per child (Linux; elsewhere a thread waits for each), not by asyncio's
default child watcher, which on Python 3.11 parks one ``waitpid`` thread per child. One
asyncio task per process waits for its exit; when the main process is gone, whatever remains
of its group is killed, as a container runtime does when a container's init exits. An exit
nobody asked for becomes a ``Ready=False/ContainerExited`` snapshot with the exit code plus a
``ProcessExited`` warning. An exit caused by stop, delete or close is reported by that
operation instead: stop reports ``Suspended=True/PodTerminated``, delete a ``DeletedEvent``,
close nothing. Stopping sends SIGTERM and, after ``stop_grace_s``, SIGKILL. Operations on one
id are serialized by a per-id lock, which guards only this driver's processes and files.

**Revisions.** One counter per driver orders its snapshots. It starts at the clock in
microseconds (``clock() * 1000``), so a restarted driver keeps counting above its previous run
unless that run emitted more than a thousand snapshots per millisecond or the clock went back.

**Restart.** A child of a dead gateway cannot be adopted, so ``start()`` restores each owned
sandbox from its ``state``: one that was ``running`` is started again (the gateway restart is
the process's restart); a stopped one reports Suspended; one that had exited reports its exit
code again. Whatever the state, a process the previous run left is killed first, so a sandbox
never runs twice: one whose environment carries the sandbox's recorded run token (found by
scanning ``/proc``, signalled through a pidfd after checking the token again, so a pid reused
in between is never hit), and the one the ``pid`` file names if its start time matches. Both
checks need Linux ``/proc``; elsewhere a survivor is left alone. ``close()`` terminates every
child at once and leaves ``state`` as it was, so the next ``start()`` brings them back.

**Blocking.** Only small metadata files are read and written inline. A workdir is removed by
renaming it aside and running ``rm -rf`` as a subprocess, so a large tree does not stall the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import DecodeError

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.base import (
    DeletedEvent,
    DriverError,
    DriverEvent,
    DriverNotOwner,
    PlatformEvent,
    SnapshotEvent,
)
from shellgate.controller.drivers.exec import CommandNotStarted, ExecSpec, LogLine, LogQuery
from shellgate.controller.drivers.fanout import EventFanout, PublishesThroughFanout
from shellgate.controller.drivers.local_exec import LocalExecSession, start_exec
from shellgate.controller.drivers.local_logs import SandboxLogFile
from shellgate.reconcilers.snapshot import DriverCondition, DriverSnapshot, InstanceFacts
from shellgate.store.errors import quoted

log = logging.getLogger(__name__)


def _idle_command() -> tuple[str, ...]:
    """What a sandbox without a command runs: ``sleep infinity`` (about 1 MB and a
    millisecond to start), or a Python that pauses (10 MB and 20 ms of CPU) where no
    ``sleep`` is found. Both wait for a signal and die of SIGTERM."""
    sleep = shutil.which("sleep")
    if sleep is not None:
        return (sleep, "infinity")
    return (sys.executable, "-c", "import signal; signal.pause()")


DEFAULT_IDLE_COMMAND: tuple[str, ...] = _idle_command()
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")  # a safe single path component
_TRASH = ".trash-"
_RUNNING, _STOPPED, _EXITED = "running", "stopped", "exited"
# Names one spawn of one sandbox in the process's environment; children inherit it.
RUN_TOKEN_ENV = "SHELLGATE_SANDBOX_RUN"

# (type, status, reason, message) of one condition, before a transition time is attached.
_Cond = tuple[str, str, str, str]


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class _Child:
    """A child process whose exit is reaped on the event loop, without a thread.

    The loop watches a pidfd of the child (readable once it has exited) and reaps it then;
    where ``os.pidfd_open`` is missing or refused, one thread waits for this child instead.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._loop = asyncio.get_running_loop()
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):
            self._thread = asyncio.ensure_future(asyncio.to_thread(popen.wait))
            self._thread.add_done_callback(lambda done: self._reaped(done.result()))
            return
        self._loop.add_reader(self._pidfd, self._on_readable)

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def _on_readable(self) -> None:
        returncode = self._popen.poll()
        if returncode is None:
            return  # not exited after all: keep watching
        assert self._pidfd is not None
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self._pidfd = None
        self._reaped(returncode)

    def _reaped(self, returncode: int) -> None:
        if not self._exited.done():
            self._exited.set_result(returncode)

    async def wait(self) -> int:
        """The exit status (``-N`` for a death by signal N), once the child has exited."""
        return await asyncio.shield(self._exited)


def _start_child(
    argv: list[str], workdir: Path, env: dict[str, str], stdout_fd: int, stderr_fd: int
) -> _Child:
    """Start one sandbox process in a new session, its output on the two descriptors."""
    popen = subprocess.Popen(
        argv,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=stdout_fd,
        stderr=stderr_fd,
        start_new_session=True,
    )
    return _Child(popen)


@dataclass
class _Run:
    """One process of a sandbox and the task that waits for its exit."""

    process: _Child
    token: str = ""
    captures: list[asyncio.Task[None]] = field(default_factory=list)
    waiter: asyncio.Task[None] | None = None
    terminating: bool = False  # set by stop/delete/close before signalling: they report the exit


@dataclass
class _KeyLock:
    """One sandbox's lock and the calls that hold it or wait for it; the entry goes with the
    last of them, so the driver keeps nothing for a sandbox it no longer works on."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass
class _Sandbox:
    message: openshell_pb2.Sandbox
    workdir: Path
    state: str = _RUNNING
    run: _Run | None = None
    snapshot: DriverSnapshot | None = None
    execs: set[LocalExecSession] = field(default_factory=set)

    @property
    def id(self) -> str:
        return self.message.metadata.id


class LocalDriver(PublishesThroughFanout):
    """Runs each sandbox as a child process of this gateway (see the module docstring)."""

    name = "local"
    routes_by_owner = True

    def __init__(
        self,
        *,
        state_dir: Path,
        replica_id: str,
        idle_command: Sequence[str] = DEFAULT_IDLE_COMMAND,
        clock: Callable[[], int] | None = None,
        stop_grace_s: float = 5.0,
    ) -> None:
        if not replica_id or replica_id != replica_id.strip():
            raise ValueError(f"replica_id must be non-empty, without outer spaces: {replica_id!r}")
        if not idle_command:
            raise ValueError("idle_command must not be empty")
        self._root = state_dir / "sandboxes"
        self._replica_id = replica_id
        self._idle_command = tuple(idle_command)
        self._clock = clock or _wall_clock_ms
        self._stop_grace_s = stop_grace_s
        self._revision = self._clock() * 1000
        self._node_name = socket.gethostname()
        self._sandboxes: dict[str, _Sandbox] = {}
        self._locks: dict[str, _KeyLock] = {}
        self._fanout = EventFanout()
        self._started = False
        self._closed = False

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def watch_ready(self) -> bool:
        return self._started and not self._closed

    async def start(self) -> None:
        """Restore the sandboxes this replica owns from a previous run, then report ready."""
        if self._started or self._closed:
            return
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        survivors = _processes_by_run_token()
        for path in sorted(self._root.iterdir()):
            if path.name.startswith(_TRASH):
                await _rm_rf(path)  # left by a delete that did not finish
            elif path.name not in self._sandboxes and self._owns(path):
                async with self._lock(path.name):
                    _kill_survivors(path, survivors)
                    await self._restore(path)
        self._started = True

    async def close(self) -> None:
        """Terminate every child at once (SIGTERM, then SIGKILL) and end all event streams."""
        if self._closed:
            return
        self._closed = True
        under_way = {*self._sandboxes, *self._locks}  # and the creates not finished yet
        await asyncio.gather(*(self._terminate_for_close(i) for i in under_way))
        self._fanout.close()

    # ---- operations ------------------------------------------------------------------------

    async def create_sandbox(self, sandbox: openshell_pb2.Sandbox) -> None:
        sandbox_id = sandbox.metadata.id
        if not _ID.fullmatch(sandbox_id):
            raise DriverError(f"the local driver cannot use {sandbox_id!r} as a sandbox id")
        async with self._lock(sandbox_id):
            if sandbox_id in self._sandboxes:
                return  # exists with this id: success, whatever state it is in
            workdir = self._root / sandbox_id
            try:
                claimed = self._claim(workdir)
            except OSError as exc:
                log.warning("sandbox %s: cannot make %s: %s", sandbox_id, workdir, exc)
                raise DriverError(
                    f"sandbox {sandbox_id}: cannot make its working directory: {_reason(exc)}"
                ) from exc
            if not claimed:
                log.info("sandbox %s belongs to another replica; not creating it", sandbox_id)
                return
            message = openshell_pb2.Sandbox()
            message.CopyFrom(sandbox)
            entry = _Sandbox(message=message, workdir=workdir)
            try:
                _write(workdir / "sandbox.pb", message.SerializeToString())
                run = await self._spawn(entry)
            except (DriverError, OSError) as exc:
                await _remove_tree(workdir)  # leave nothing half-made behind
                log.warning("sandbox %s could not start: %s", sandbox_id, exc)
                raise DriverError(f"sandbox {sandbox_id}: {_reason(exc)}") from exc
            self._sandboxes[sandbox_id] = entry
            self._publish(entry, self._running_snapshot(entry, run.process.pid))

    def owns(self, sandbox_id: str) -> bool:
        """Ours: it runs here, or its ``owner`` file names us. A missing file is not
        evidence: with one state directory per replica every other replica's sandbox has none
        here, and treating those as ours let each replica delete the others' rows."""
        if sandbox_id in self._sandboxes:
            return True
        return bool(_ID.fullmatch(sandbox_id)) and self._owns(self._root / sandbox_id)

    def _refuse_foreign(self, sandbox_id: str) -> None:
        """Raise DriverNotOwner when another replica's driver owns ``sandbox_id``."""
        if sandbox_id in self._sandboxes or not _ID.fullmatch(sandbox_id):
            return
        owner = _read_text(self._root / sandbox_id / "owner")
        if owner is not None and owner != self._replica_id:
            raise DriverNotOwner(f"sandbox {sandbox_id} runs on replica {owner!r}")

    async def stop_sandbox(self, sandbox_id: str) -> None:
        if sandbox_id not in self._sandboxes:
            self._refuse_foreign(sandbox_id)
            return
        async with self._lock(sandbox_id):
            entry = self._sandboxes.get(sandbox_id)
            if entry is None or entry.state == _STOPPED:
                return
            self._set_state(entry, _STOPPED)  # first, so a crash mid-stop still restores it stopped
            if entry.run is not None:
                await self._terminate(entry.run)
            self._publish(entry, self._stopped_snapshot(entry))

    async def start_sandbox(self, sandbox_id: str) -> None:
        """Run the sandbox's command again if it is stopped or has exited; no-op if running."""
        if sandbox_id not in self._sandboxes:
            self._refuse_foreign(sandbox_id)
            return
        async with self._lock(sandbox_id):
            entry = self._sandboxes.get(sandbox_id)
            if entry is None or entry.run is not None:
                return
            run = await self._spawn(entry)
            self._publish(entry, self._running_snapshot(entry, run.process.pid))

    async def delete_sandbox(self, sandbox_id: str) -> bool:
        if not _ID.fullmatch(sandbox_id):
            return False
        workdir = self._root / sandbox_id
        self._refuse_foreign(sandbox_id)
        if sandbox_id not in self._sandboxes and not self._owns(workdir):
            return False
        async with self._lock(sandbox_id):
            entry = self._sandboxes.pop(sandbox_id, None)
            if entry is None and not self._owns(workdir):
                return False  # deleted meanwhile
            if entry is not None and entry.run is not None:
                await self._terminate(entry.run)
            await _remove_tree(workdir)
            self._emit(DeletedEvent(sandbox_id=sandbox_id))
            return True

    async def get_sandbox(self, sandbox_id: str) -> DriverSnapshot | None:
        entry = self._sandboxes.get(sandbox_id)
        return entry.snapshot if entry is not None else None

    async def list_sandboxes(self) -> list[DriverSnapshot]:
        return [e.snapshot for e in self._sandboxes.values() if e.snapshot is not None]

    # ---- processes -------------------------------------------------------------------------

    async def _spawn(self, entry: _Sandbox) -> _Run:
        """Start the sandbox's command; the caller holds its lock and publishes the snapshot."""
        if self._closed:
            raise DriverError("the local driver is closed")
        argv = list(entry.message.spec.command) or list(self._idle_command)
        token = secrets.token_hex(16)
        previous_state = entry.state
        try:
            # The intent, before the process exists: killed right after the spawn, this
            # driver's successor still finds the process by the token and kills it.
            _write(entry.workdir / "run", token.encode(), durable=True)
        except OSError as exc:
            raise DriverError(f"cannot record the run: {exc}") from exc
        self._set_state(entry, _RUNNING)
        try:
            process, captures = await self._exec(entry, argv, token)
        except DriverError:
            self._set_state(entry, previous_state)
            raise
        # From here nothing may raise: the process runs and only its waiter will reap it.
        run = _Run(process, token=token, captures=captures)
        run.waiter = asyncio.create_task(self._wait(entry, run), name=f"local-sandbox-{entry.id}")
        entry.run = run
        try:
            _write(
                entry.workdir / "pid", f"{process.pid} {_start_time(process.pid) or ''}".encode()
            )
        except OSError as exc:
            log.warning("sandbox %s: cannot record pid %d: %s", entry.id, process.pid, exc)
        return run

    async def _exec(
        self, entry: _Sandbox, argv: list[str], token: str
    ) -> tuple[_Child, list[asyncio.Task[None]]]:
        """The process itself, in a new session, its output captured into ``sandbox.log``."""
        out_read, out_write = os.pipe()
        err_read, err_write = os.pipe()
        try:
            process = _start_child(
                argv, entry.workdir, self._environment(entry, token), out_write, err_write
            )
        except (OSError, ValueError) as exc:
            os.close(out_read)
            os.close(err_read)
            raise DriverError(f"cannot start {quoted(argv[0])}: {_reason(exc)}") from exc
        finally:
            os.close(out_write)
            os.close(err_write)
        log_file = SandboxLogFile(entry.workdir, self._clock)
        captures = [
            asyncio.create_task(log_file.capture(stream, fd), name=f"log-{entry.id}-{stream}")
            for stream, fd in (("stdout", out_read), ("stderr", err_read))
        ]
        return process, captures

    def _environment(self, entry: _Sandbox, token: str) -> dict[str, str]:
        spec = entry.message.spec
        env = sandbox_base_environment(entry.workdir)
        env.update(spec.template.environment)
        env.update(spec.environment)
        env[RUN_TOKEN_ENV] = token  # last, so a spec cannot hide the process from a restart
        return env

    # ---- exec and logs ---------------------------------------------------------------------

    async def open_exec(self, sandbox: openshell_pb2.Sandbox, spec: ExecSpec) -> LocalExecSession:
        """Run ``spec`` in the sandbox (see "Exec" in the module docstring)."""
        sandbox_id = sandbox.metadata.id
        self._refuse_foreign(sandbox_id)
        async with self._lock(sandbox_id):  # not while a stop or delete is under way
            entry = self._sandboxes.get(sandbox_id)
            if entry is None or entry.run is None or self._closed:
                raise CommandNotStarted(f"sandbox {sandbox_id} is not running on this replica")
            env = self._environment(entry, entry.run.token)
            env.update(spec.environment)
            env[RUN_TOKEN_ENV] = entry.run.token
            session = await start_exec(spec, workdir=entry.workdir / spec.workdir, environment=env)
            entry.execs.add(session)
        session.on_exit(lambda: entry.execs.discard(session))
        log.info(
            "sandbox %s: exec pid %d (request %s)", sandbox_id, session.pid, spec.request_id or "-"
        )
        return session

    async def read_logs(self, sandbox: openshell_pb2.Sandbox, query: LogQuery) -> list[LogLine]:
        """Every line the main process wrote that is still kept, oldest first (the handler
        filters and bounds them)."""
        sandbox_id = sandbox.metadata.id
        self._refuse_foreign(sandbox_id)
        entry = self._sandboxes.get(sandbox_id)
        if entry is None:
            return []
        return await SandboxLogFile(entry.workdir, self._clock).read()

    @staticmethod
    async def _kill_execs(entry: _Sandbox) -> None:
        sessions, entry.execs = list(entry.execs), set()
        await asyncio.gather(*(s.kill() for s in sessions), return_exceptions=True)

    async def _wait(self, entry: _Sandbox, run: _Run) -> None:
        returncode = await run.process.wait()
        # The group leader is reaped; kill what is left of its group. Its pgid cannot be reused
        # while any member lives, so this reaches no one else unless the group is already empty
        # and a new session took the same id within these microseconds.
        _kill_group(run.process.pid, signal.SIGKILL)
        await self._kill_execs(entry)  # an exec does not outlive its sandbox's process
        if run.captures:
            await asyncio.wait(run.captures, timeout=self._stop_grace_s)  # the last lines
        if entry.run is run:
            entry.run = None
        if run.terminating:
            return
        exit_code, message = _describe_exit(returncode)
        self._set_state(entry, f"{_EXITED} {exit_code}")
        self._publish(entry, self._exited_snapshot(entry, message, exit_code))
        self._emit(self._platform_event(entry, "Warning", "ProcessExited", message))

    async def _terminate(self, run: _Run) -> None:
        """SIGTERM the process group, SIGKILL it after the grace, and wait for the exit."""
        run.terminating = True
        assert run.waiter is not None
        _signal(run.process, signal.SIGTERM)
        done, _ = await asyncio.wait({run.waiter}, timeout=self._stop_grace_s)
        if not done:
            _signal(run.process, signal.SIGKILL)
            done, _ = await asyncio.wait({run.waiter}, timeout=self._stop_grace_s)
            if not done:
                log.warning(
                    "process %d survived SIGKILL for %ss", run.process.pid, self._stop_grace_s
                )

    async def _terminate_for_close(self, sandbox_id: str) -> None:
        async with self._lock(sandbox_id):
            entry = self._sandboxes.get(sandbox_id)
            if entry is not None and entry.run is not None:
                await self._terminate(entry.run)

    async def _restore(self, workdir: Path) -> None:
        """Bring back one sandbox of a previous run (see "Restart" in the module docstring)."""
        try:
            stored = openshell_pb2.Sandbox.FromString((workdir / "sandbox.pb").read_bytes())
        except (OSError, DecodeError) as exc:
            log.warning("%s: cannot read sandbox.pb (%s); leaving it alone", workdir, exc)
            return
        if stored.metadata.id != workdir.name:
            log.warning("%s: sandbox.pb names %r; leaving it alone", workdir, stored.metadata.id)
            return
        entry = _Sandbox(message=stored, workdir=workdir)
        self._sandboxes[workdir.name] = entry
        state = _read_text(workdir / "state") or _RUNNING
        if state == _STOPPED:
            entry.state = _STOPPED
            self._publish(entry, self._stopped_snapshot(entry))
        elif state.startswith(_EXITED):
            entry.state = state
            code = state.removeprefix(_EXITED).strip()
            exit_code = int(code) if code.lstrip("-").isdigit() else None
            text = f"exited with code {code}" if exit_code is not None else "process lost"
            self._publish(entry, self._exited_snapshot(entry, text, exit_code))
        else:
            try:
                run = await self._spawn(entry)
            except DriverError as exc:
                lost = f"gateway restarted; process lost; cannot start it again: {exc}"
                self._set_state(entry, _EXITED)
                self._publish(entry, self._exited_snapshot(entry, lost, None))
                return
            pid = run.process.pid
            self._publish(entry, self._running_snapshot(entry, pid))
            restarted = f"gateway restarted; process lost; started again as pid {pid}"
            self._emit(self._platform_event(entry, "Normal", "ProcessRestarted", restarted))

    # ---- ownership and files ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lock(self, sandbox_id: str) -> AsyncIterator[None]:
        """Operations on one sandbox, one at a time. The lock exists only while a call holds
        or awaits it: one kept per id ever seen grew the gateway by every sandbox it had
        created (bench/scale_soak.py found it)."""
        held = self._locks.setdefault(sandbox_id, _KeyLock())
        held.users += 1
        try:
            async with held.lock:
                yield
        finally:
            held.users -= 1
            if held.users == 0:
                del self._locks[sandbox_id]

    def _owns(self, workdir: Path) -> bool:
        return (
            bool(_ID.fullmatch(workdir.name)) and _read_text(workdir / "owner") == self._replica_id
        )

    def _claim(self, workdir: Path) -> bool:
        """Make the workdir ours unless another replica owns it; True if it is ours."""
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        workdir.mkdir(mode=0o700, exist_ok=True)
        try:
            fd = os.open(workdir / "owner", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return self._owns(workdir)  # an empty file means another replica is mid-claim
        with os.fdopen(fd, "w") as owner:
            owner.write(self._replica_id)
        workdir.chmod(0o700)  # mkdir's mode is filtered by the umask
        return True

    def _set_state(self, entry: _Sandbox, state: str) -> None:
        entry.state = state
        try:
            _write(entry.workdir / "state", state.encode())
        except OSError as exc:
            log.warning("sandbox %s: cannot record state %r: %s", entry.id, state, exc)

    # ---- snapshots and events --------------------------------------------------------------

    def _running_snapshot(self, entry: _Sandbox, pid: int) -> DriverSnapshot:
        instance = InstanceFacts(pod_name=f"local-{pid}", node_name=self._node_name)
        return self._snapshot(
            entry,
            ("Ready", "True", "ProcessRunning", f"pid {pid}"),
            ("Suspended", "False", "NotSuspended", ""),
            instance=instance,
        )

    def _stopped_snapshot(self, entry: _Sandbox) -> DriverSnapshot:
        return self._snapshot(
            entry,
            ("Ready", "False", "SandboxSuspended", "stopped"),
            ("Suspended", "True", "PodTerminated", "process terminated"),
        )

    def _exited_snapshot(self, entry: _Sandbox, message: str, code: int | None) -> DriverSnapshot:
        return self._snapshot(
            entry,
            ("Ready", "False", "ContainerExited", message),
            ("Suspended", "False", "NotSuspended", ""),
            exit_code=code,
        )

    def _snapshot(
        self,
        entry: _Sandbox,
        *conditions: _Cond,
        instance: InstanceFacts | None = None,
        exit_code: int | None = None,
    ) -> DriverSnapshot:
        now = self._clock()
        previous = {c.type: c for c in entry.snapshot.conditions} if entry.snapshot else {}
        built = []
        for type_, status, reason, message in conditions:
            before = previous.get(type_)
            since = before.last_transition_time_ms if before and before.status == status else now
            built.append(DriverCondition(type_, status, reason, message, since))
        self._revision += 1
        return DriverSnapshot(
            sandbox_id=entry.id,
            revision=self._revision,
            conditions=tuple(built),
            has_status=True,
            instance=instance or InstanceFacts(),
            exit_code=exit_code,
        )

    def _platform_event(
        self, entry: _Sandbox, type_: str, reason: str, message: str
    ) -> PlatformEvent:
        return PlatformEvent(
            sandbox_id=entry.id,
            type=type_,
            reason=reason,
            message=message,
            timestamp_ms=self._clock(),
            source=f"local-driver/{self._replica_id}",
        )

    def _publish(self, entry: _Sandbox, snapshot: DriverSnapshot) -> None:
        entry.snapshot = snapshot
        self._emit(SnapshotEvent(snapshot=snapshot))

    def _emit(self, event: DriverEvent) -> None:
        self._fanout.publish(event)


def sandbox_base_environment(workdir: Path) -> dict[str, str]:
    """What a sandbox process gets before its spec's environment: the gateway's ``PATH``
    (with its interpreter's directory first) and ``LANG``, and ``HOME`` in its workdir."""
    interpreter_dir = str(Path(sys.executable).parent)
    path = [p for p in os.environ.get("PATH", os.defpath).split(os.pathsep) if p]
    return {
        "PATH": os.pathsep.join([interpreter_dir, *(p for p in path if p != interpreter_dir)]),
        "HOME": str(workdir),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
    }


def _describe_exit(returncode: int) -> tuple[int, str]:
    """Exit code and message; a death by signal N reads as code 128+N, as in containers."""
    if returncode >= 0:
        return returncode, f"exited with code {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = str(-returncode)
    return 128 - returncode, f"killed by signal {name} (exit code {128 - returncode})"


def _signal(process: _Child, sig: signal.Signals) -> None:
    if process.returncode is None:  # not reaped yet: the pid (and pgid) is still ours
        _kill_group(process.pid, sig)


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    # Gone already raises ProcessLookupError; macOS reports a group of zombies as EPERM.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill_survivors(workdir: Path, by_token: dict[str, list[int]]) -> None:
    """Kill what a previous run of this sandbox left alive, and nothing else.

    Two kinds of evidence: a process whose environment carries the sandbox's recorded run
    token (written before the spawn, so this covers a predecessor killed before it could
    record the pid), and the recorded pid if its start time proves it is the same process.
    """
    token = _read_text(workdir / "run") or ""
    for pid in by_token.get(token, []) if token else []:
        if _kill_if_token(pid, token):
            log.info("killed pid %d left running by a previous run of %s", pid, workdir.name)
    pid_text, _, start = (_read_text(workdir / "pid") or "").partition(" ")
    if pid_text.isdigit() and start and _start_time(int(pid_text)) == start:
        log.info("killing pid %s left running by a previous run of %s", pid_text, workdir.name)
        _kill_group(int(pid_text), signal.SIGKILL)


def _processes_by_run_token() -> dict[str, list[int]]:
    """Every live process carrying a run token, by token (Linux ``/proc``; else empty)."""
    found: dict[str, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for name in entries:
        if name.isdigit() and int(name) != os.getpid():
            token = _run_token_of(int(name))
            if token:
                found.setdefault(token, []).append(int(name))
    return found


def _run_token_of(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    prefix = f"{RUN_TOKEN_ENV}=".encode()
    for item in environ.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode(errors="replace")
    return None


def _kill_if_token(pid: int, token: str) -> bool:
    """SIGKILL ``pid`` and its process group if it still carries ``token``.

    The pidfd pins the process we check: if the pid was reused after the scan, the check
    reads the newcomer's environment and spares it; a process that died after the check
    makes the pidfd signal fail instead of hitting a successor.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return False  # gone
    try:
        if _run_token_of(pid) != token:
            return False
        with contextlib.suppress(ProcessLookupError):
            group = os.getpgid(pid)
            if group != os.getpgrp():  # never our own group, whatever its environment says
                _kill_group(group, signal.SIGKILL)  # a live member keeps the group id ours
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    finally:
        os.close(pidfd)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # the command name may contain spaces
    return fields[19] if len(fields) > 19 else None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _write(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Replace the file atomically, so a crash leaves the old content or the new one;
    ``durable`` also survives a power loss (file and directory fsynced)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        if durable:
            out.flush()
            os.fsync(out.fileno())
    tmp.replace(path)
    if durable:
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


async def _remove_tree(path: Path) -> None:
    """Rename the tree aside at once (so the id is free again), then delete it."""
    trash = _rename_aside(path)
    if trash is not None:
        await _rm_rf(trash)


def _rename_aside(path: Path) -> Path | None:
    """Move the tree to a trash name in the same directory (one quick syscall); None if gone."""
    trash = path.with_name(f"{_TRASH}{path.name}-{secrets.token_hex(4)}")
    try:
        path.rename(trash)
    except FileNotFoundError:
        return None
    return trash


async def _rm_rf(path: Path) -> None:
    """Delete a tree in a subprocess, so a large one does not stall the event loop."""
    try:
        rm = await asyncio.create_subprocess_exec(
            "rm",
            "-rf",
            "--",
            str(path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await rm.wait()
    except OSError:  # no rm on this system
        shutil.rmtree(path, ignore_errors=True)


def _reason(exc: BaseException) -> str:
    """What went wrong, for the client: an OSError's text names host paths (the state
    directory), which stay in the gateway's log; a DriverError's text is already meant for
    the client."""
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)
