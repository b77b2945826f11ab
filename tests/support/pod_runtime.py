"""``pods/exec`` and ``pods/log`` for the kmock emulator: the part of a kube-apiserver and a
kubelet that shellgate's exec and logs talk to, with real local processes as the containers.

kmock has no subresources of pods, and no real kube-apiserver runs here, so the tests bring
this one. It speaks the websocket channel protocol as the API server does:

- **Handshake.** A GET upgrade on ``/api/v1/namespaces/{ns}/pods/{pod}/exec`` with one
  ``command`` parameter per argument and ``container``, ``stdin``, ``stdout``, ``stderr``,
  ``tty``. The server takes the first subprotocol the client offers that it supports
  (``protocols``, default v5 and v4), and refuses with 400 when there is none. An unknown pod
  is 404, an unknown container or a request without a command 400, as a ``Status``.
- **The command** runs as a local process in the pod's directory (its "container"), in a
  process group of its own. With ``tty`` it runs on a pseudo-terminal whose size the resize
  channel sets, so ``stty size`` sees it; stderr is then merged into stdout.
- **Frames.** One empty frame on the first output channel when the stream opens (kubelets
  do this to tell the client the stream is up), then stdout on 1 and stderr on 2 as the
  process writes, stdin from 0, resizes from 4, and on v5 ``[255, 0]`` closes stdin. When the
  process ends, one ``Status`` on channel 3 (``Success``, or ``NonZeroExitCode`` with the code
  as the ``ExitCode`` cause; a signal counts as 128 + its number, as runtimes report it) and
  the websocket closes. A command that cannot start gets a ``Failure`` without an exit code.
- **Client gone.** When the websocket closes first, the process group is killed, as the
  kubelet's stream teardown does for a terminal session.

A pod that is not ``Running`` refuses exec and logs with 400, as the API server does before
its container starts; ``GET /api/v1/namespaces/{ns}/pods/{pod}`` returns the pod (name,
containers, phase). ``/api/v1/namespaces/{ns}/pods/{pod}/log`` serves the lines a test put
in ``Pod.log``, with ``container``, ``timestamps`` (RFC 3339 with nanoseconds), ``tailLines``
(applied first, as the kubelet reads the tail of the file), ``sinceTime`` / ``sinceSeconds``
and ``limitBytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import fcntl
import json
import os
import pty
import re
import signal
import struct
import termios
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
READ_SIZE = 32 * 1024
_POD_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)(?:/(exec|log))?$")


@dataclass
class Pod:
    """A pod as far as exec and logs are concerned."""

    root: Path
    containers: tuple[str, ...] = ("sandbox",)
    phase: str = "Running"
    log: list[tuple[int, str]] = field(default_factory=list)
    """(time in epoch nanoseconds, line) in the order the container wrote them."""

    def write_log(self, line: str, *, at_ns: int | None = None) -> None:
        self.log.append((time.time_ns() if at_ns is None else at_ns, line))


@dataclass
class ExecRecord:
    """What one exec request asked for and what became of it (for assertions)."""

    namespace: str
    pod: str
    query: list[tuple[str, str]]
    headers: dict[str, str] = field(default_factory=dict)
    protocol: str = ""
    pid: int | None = None
    exit_code: int | None = None
    killed_by_close: bool = False
    resizes: list[tuple[int, int]] = field(default_factory=list)
    stdin_closed: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class PodRuntime:
    """Pods that exec and logs can reach; ``serve`` answers their subresources."""

    protocols: tuple[str, ...] = (V5, V4)
    pods: dict[tuple[str, str], Pod] = field(default_factory=dict)
    execs: list[ExecRecord] = field(default_factory=list)
    default_root: Path | None = None
    """When set, any pod name exists, rooted here (the standalone server's mode)."""
    refuse_unknown_protocols: bool = True
    """False: accept a handshake without agreeing on a subprotocol (as very old servers,
    which spoke only the unversioned protocol, did)."""
    token: str | None = None
    """When set, requests must carry ``Authorization: Bearer <token>`` (else 401)."""

    def add_pod(self, namespace: str, name: str, root: Path, **kwargs: Any) -> Pod:
        pod = Pod(root=root, **kwargs)
        self.pods[namespace, name] = pod
        return pod

    def _pod(self, namespace: str, name: str) -> Pod | None:
        pod = self.pods.get((namespace, name))
        if pod is None and self.default_root is not None:
            pod = self.add_pod(namespace, name, self.default_root)
        return pod

    async def serve(self, request: web.BaseRequest) -> web.StreamResponse | None:
        """The answer for a pod subresource, or None when ``request`` is not one."""
        match = _POD_PATH.match(request.path)
        if match is None:
            return None
        if self.token is not None and request.headers.get("Authorization") != (
            f"Bearer {self.token}"
        ):
            return _status(401, "Unauthorized", "Unauthorized")
        namespace, name, subresource = match.groups()
        pod = self._pod(namespace, name)
        if pod is None:
            return _status(404, "NotFound", f'pods "{name}" not found')
        if subresource is None:
            return _pod_object(namespace, name, pod)
        container = request.query.get("container") or pod.containers[0]
        if container not in pod.containers:
            return _status(400, "BadRequest", f"container {container} is not valid for pod {name}")
        if pod.phase != "Running":
            message = f'container "{container}" in pod "{name}" is waiting to start'
            return _status(400, "BadRequest", message)
        if subresource == "log":
            return _serve_log(request, pod)
        return await self._serve_exec(request, namespace, name, pod)

    async def _serve_exec(
        self, request: web.BaseRequest, namespace: str, name: str, pod: Pod
    ) -> web.StreamResponse:
        query = list(request.query.items())
        command = request.query.getall("command", [])
        if not command:
            return _status(400, "BadRequest", "you must specify at least 1 command")
        offered = [
            p.strip()
            for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        if self.refuse_unknown_protocols and not any(p in self.protocols for p in offered):
            return _status(400, "BadRequest", f"no supported subprotocol among {offered}")
        ws = web.WebSocketResponse(protocols=self.protocols, autoping=True)
        await ws.prepare(request)  # type: ignore[arg-type]
        record = ExecRecord(
            namespace, name, query, headers=dict(request.headers), protocol=str(ws.ws_protocol)
        )
        self.execs.append(record)
        flags = {k: request.query.get(k) == "true" for k in ("stdin", "stdout", "stderr", "tty")}
        try:
            await _run(ws, record, command, pod.root, **flags)
        finally:
            record.done.set()
        return ws


# ---- exec ---------------------------------------------------------------------------------


async def _run(
    ws: web.WebSocketResponse,
    record: ExecRecord,
    command: list[str],
    root: Path,
    *,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
) -> None:
    await ws.send_bytes(bytes((STDOUT if stdout or tty else STDERR if stderr else ERROR,)))
    try:
        process = await _Process.start(command, root, tty=tty, stderr=stderr)
    except OSError as exc:
        await _finish(ws, _failure(f'exec: "{command[0]}": {exc.strerror}'))
        return
    record.pid = process.pid
    pumps = [asyncio.create_task(process.pump(ws))]
    client = asyncio.create_task(_from_client(ws, record, process, stdin=stdin))
    exited = asyncio.create_task(process.wait())
    try:
        await asyncio.wait({exited, client}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # The client went away first (its close frame, or aiohttp cancelling this handler
        # when the connection drops): kill the process, as the kubelet's teardown does.
        if not exited.done():
            record.killed_by_close = True
            process.kill()
            for task in (*pumps, client):
                task.cancel()
            await asyncio.gather(exited, *pumps, client, return_exceptions=True)
            process.close_terminal()
    if record.killed_by_close:
        return
    await asyncio.gather(*pumps, return_exceptions=True)
    record.exit_code = exited.result()
    await _finish(ws, _exit_status(command, record.exit_code))
    client.cancel()
    await asyncio.gather(client, return_exceptions=True)


async def _from_client(
    ws: web.WebSocketResponse, record: ExecRecord, process: _Process, *, stdin: bool
) -> None:
    """Stdin, resizes and (v5) the close of stdin, until the client closes the websocket."""
    async for message in ws:
        if message.type is not aiohttp.WSMsgType.BINARY or not message.data:
            continue
        channel, payload = message.data[0], message.data[1:]
        if channel == STDIN and stdin:
            await process.write(payload)
        elif channel == RESIZE:
            size = json.loads(payload)
            record.resizes.append((int(size["Width"]), int(size["Height"])))
            process.resize(int(size["Width"]), int(size["Height"]))
        elif channel == CLOSE and record.protocol == V5 and payload[:1] == bytes((STDIN,)):
            record.stdin_closed = True
            process.close_stdin()


async def _finish(ws: web.WebSocketResponse, status: dict[str, Any]) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_bytes(bytes((ERROR,)) + json.dumps(status).encode())
        await ws.close()


def _exit_status(command: list[str], code: int) -> dict[str, Any]:
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command "
        f"{command}, exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


def _failure(message: str) -> dict[str, Any]:
    return {"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"}


class _Process:
    """The container process: pipes, or a pseudo-terminal when ``tty``."""

    def __init__(self, process: asyncio.subprocess.Process, master: int | None) -> None:
        self._process = process
        self._master = master
        self.pid = process.pid

    @classmethod
    async def start(cls, command: list[str], root: Path, *, tty: bool, stderr: bool) -> _Process:
        if not tty:
            process = await asyncio.create_subprocess_exec(
                *command,
                cwd=root,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE if stderr else asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
            return cls(process, None)
        master, slave = pty.openpty()
        try:
            process = await asyncio.create_subprocess_exec(
                *command, cwd=root, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
            )
        except OSError:
            os.close(master)
            raise
        finally:
            os.close(slave)
        return cls(process, master)

    async def pump(self, ws: web.WebSocketResponse) -> None:
        if self._master is not None:
            await _pump(self._read_terminal, ws, STDOUT)
            return
        streams = [(self._process.stdout, STDOUT), (self._process.stderr, STDERR)]
        await asyncio.gather(
            *(_pump(lambda s=s: s.read(READ_SIZE), ws, ch) for s, ch in streams if s is not None)
        )

    async def write(self, data: bytes) -> None:
        if self._master is not None:
            os.write(self._master, data)
        elif self._process.stdin is not None and not self._process.stdin.is_closing():
            self._process.stdin.write(data)
            with contextlib.suppress(ConnectionError):
                await self._process.stdin.drain()

    def close_stdin(self) -> None:
        if self._master is not None:
            os.write(self._master, b"\x04")  # end of file, as a terminal says it
        elif self._process.stdin is not None:
            self._process.stdin.close()

    def resize(self, cols: int, rows: int) -> None:
        if self._master is not None:
            size = struct.pack("HHHH", rows, cols, 0, 0)
            fcntl.ioctl(self._master, termios.TIOCSWINSZ, size)

    async def wait(self) -> int:
        code = await self._process.wait()
        return 128 - code if code < 0 else code

    async def _read_terminal(self) -> bytes:
        """One read from the terminal; b"" once the process side is gone (EIO on Linux)."""
        master = self._master
        if master is None:
            return b""
        loop = asyncio.get_running_loop()
        ready = loop.create_future()
        loop.add_reader(master, lambda: ready.done() or ready.set_result(None))
        try:
            await ready
        finally:
            loop.remove_reader(master)
        try:
            return os.read(master, READ_SIZE)
        except OSError:
            self.close_terminal()
            return b""

    def close_terminal(self) -> None:
        """Release the terminal when nobody will read it to its end any more."""
        if self._master is not None:
            with contextlib.suppress(OSError):
                os.close(self._master)
            self._master = None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)


async def _pump(read: Callable[[], Awaitable[bytes]], ws: web.WebSocketResponse, ch: int) -> None:
    while data := await read():
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_bytes(bytes((ch,)) + data)


# ---- logs ---------------------------------------------------------------------------------


def _serve_log(request: web.BaseRequest, pod: Pod) -> web.Response:
    entries = list(pod.log)
    tail = request.query.get("tailLines")
    if tail is not None:
        entries = entries[-int(tail) :] if int(tail) > 0 else []
    since_ns = _since_ns(request.query.get("sinceTime"), request.query.get("sinceSeconds"))
    entries = [(at, line) for at, line in entries if at >= since_ns]
    with_time = request.query.get("timestamps") == "true"
    text = "".join(
        f"{_rfc3339_nano(at)} {line}\n" if with_time else f"{line}\n" for at, line in entries
    )
    body = text.encode()
    limit = request.query.get("limitBytes")
    if limit is not None:
        body = body[: int(limit)]
    return web.Response(body=body, content_type="text/plain")


def _since_ns(since_time: str | None, since_seconds: str | None) -> int:
    if since_time:
        moment = datetime.datetime.fromisoformat(since_time.replace("Z", "+00:00"))
        return int(moment.timestamp()) * 1_000_000_000
    if since_seconds:
        return time.time_ns() - int(since_seconds) * 1_000_000_000
    return 0


def _rfc3339_nano(at_ns: int) -> str:
    seconds, nanos = divmod(at_ns, 1_000_000_000)
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    fraction = f".{nanos:09d}".rstrip("0").rstrip(".")  # Go's RFC3339Nano drops trailing zeros
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + fraction + "Z"


def _pod_object(namespace: str, name: str, pod: Pod) -> web.Response:
    """The pod as ``GET pods/{name}`` returns it, reduced to what the driver reads."""
    body = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"containers": [{"name": c, "image": "sandbox"} for c in pod.containers]},
        "status": {"phase": pod.phase},
    }
    return web.json_response(body)


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}  # fmt: skip
    return web.json_response(body, status=code)
