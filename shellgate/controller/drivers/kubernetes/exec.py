"""A command in a sandbox's pod, through the ``pods/exec`` subresource over a websocket.

**Connection.** The websocket is opened with the library client's own aiohttp session (its
TLS settings, client certificate and proxy) and its credentials (the same bearer token the
driver's other requests send), offering ``v5.channel.k8s.io`` then ``v4.channel.k8s.io``.
``kubernetes_asyncio``'s ``WsApiClient`` is not used: it pins one subprotocol by header, so
the negotiated version cannot be known, and it reads the exit code from the first cause of
the status regardless of its reason. ``channel`` has the wire format.

**Streaming.** A reader task turns frames into ``ExecOutput`` chunks of at most
``OUTPUT_CHUNK`` bytes on a bounded queue; when nobody drains ``output()`` the reader stops
reading, and the websocket's flow control pushes back on the API server rather than memory
growing here. The error channel's ``Status`` gives the exit code (``wait()``).

**Limits.** Kubernetes has no way to signal an exec'd process. ``kill()`` closes the
websocket: the API server then closes the streams to the kubelet, and with a terminal the
process usually gets SIGHUP, without one it sees EOF on stdin and a broken pipe on its next
write.
A process that ignores both keeps running in the container until it exits by itself. On
``v4.channel.k8s.io`` (API servers before 1.30) stdin cannot be closed on its own, so a
command that reads stdin to its end only finishes when it is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Literal
from urllib.parse import quote

import aiohttp
from kubernetes_asyncio import client as k8s

from shellgate.controller.drivers.base import DriverError
from shellgate.controller.drivers.exec import ExecOutput, ExecSpec
from shellgate.controller.drivers.kubernetes import channel
from shellgate.controller.drivers.kubernetes.client import ApiError

log = logging.getLogger(__name__)

OUTPUT_CHUNK = 64 * 1024
"""The most bytes one ``ExecOutput`` carries (and one stdin frame sends)."""
OUTPUT_QUEUE = 32
"""Chunks buffered before the reader stops reading the websocket."""
MAX_MESSAGE = 4 * 1024 * 1024
"""The largest websocket message accepted (kubelets send far smaller ones)."""
HANDSHAKE_TIMEOUT = 30.0
KILLED_STATUS = -9
"""``wait()`` after ``kill()`` when no exit status arrived first: the same value Python's
subprocess reports for a process killed by SIGKILL."""

_END = object()


class PodExecSession:
    """One running ``pods/exec`` stream; implements the ``ExecSession`` protocol."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, *, tty: bool, target: str) -> None:
        self._ws = ws
        self._tty = tty
        self._target = target
        self.protocol = str(ws.protocol or "")
        # Unbounded so that the end marker always fits; the semaphore bounds the chunks.
        self._queue: asyncio.Queue[ExecOutput | object] = asyncio.Queue()
        self._room = asyncio.Semaphore(OUTPUT_QUEUE)
        self._status: bytes | None = None
        self._stdin_closed = False
        self._killed = False
        self._send_lock = asyncio.Lock()
        self._reader = asyncio.create_task(self._read(), name=f"exec-reader {target}")

    async def _read(self) -> None:
        try:
            async for message in self._ws:
                if message.type is not aiohttp.WSMsgType.BINARY:
                    continue  # pings are answered by aiohttp; text is not part of v4/v5
                await self._dispatch(channel.decode(message.data))
        except (aiohttp.ClientError, OSError) as exc:
            log.debug("exec stream %s broke: %s", self._target, exc)
        finally:
            self._queue.put_nowait(_END)

    async def _dispatch(self, frame: channel.Frame | None) -> None:
        if frame is None or not frame.payload:
            return  # the server opens with an empty frame on its first stream
        stream: Literal["stdout", "stderr"]
        if frame.channel == channel.STDOUT:
            stream = "stdout"
        elif frame.channel == channel.STDERR:
            stream = "stderr"
        elif frame.channel == channel.ERROR:
            self._status = (self._status or b"") + frame.payload
            return
        else:
            return
        for start in range(0, len(frame.payload), OUTPUT_CHUNK):
            await self._room.acquire()
            chunk = frame.payload[start : start + OUTPUT_CHUNK]
            self._queue.put_nowait(ExecOutput(stream=stream, data=chunk))

    async def _next(self) -> ExecOutput | None:
        """The next chunk, or None at the end (the end marker stays for later callers)."""
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)
            return None
        self._room.release()
        assert isinstance(item, ExecOutput)
        return item

    async def output(self) -> AsyncIterator[ExecOutput]:
        """Output chunks as the command produces them; ends when its streams close."""
        while (item := await self._next()) is not None:
            yield item

    async def write_stdin(self, data: bytes) -> None:
        """Send ``data`` to the command's stdin; dropped once the command has ended.

        After ``close_stdin()`` it raises ``BrokenPipeError``, as a write to a closed pipe
        does for the local driver's processes."""
        if self._stdin_closed:
            raise BrokenPipeError(f"stdin of the exec in {self._target} is closed")
        for frame in channel.encode_chunks(channel.STDIN, data, OUTPUT_CHUNK):
            await self._send(frame)

    async def close_stdin(self) -> None:
        """End stdin (v5); on v4 the protocol has no way to, see the module docstring."""
        if self._stdin_closed:
            return
        self._stdin_closed = True
        if self.protocol == channel.V5_PROTOCOL:
            await self._send(channel.close_stream(channel.STDIN))
        else:
            log.debug("exec %s: %s cannot end stdin on its own", self._target, self.protocol)

    async def resize(self, cols: int, rows: int) -> None:
        """A new terminal size (only meaningful with a terminal, ignored otherwise)."""
        if self._tty and cols > 0 and rows > 0:
            await self._send(channel.resize(cols, rows))

    async def wait(self) -> int:
        """The exit code, once the streams have ended.

        Raises ``DriverError`` when the command could not run (the server's message) or when
        the stream ended without a status (the API server or the connection went away).
        Output that nobody read is discarded so that the reader can finish.
        """
        while await self._next() is not None:
            pass
        await asyncio.gather(self._reader, return_exceptions=True)
        if self._status is not None:
            try:
                return channel.exit_code(self._status)
            except channel.ExecStatusError as exc:
                raise DriverError(f"exec in {self._target} failed: {exc}") from None
        if self._killed:
            return KILLED_STATUS
        raise DriverError(f"the exec stream of {self._target} ended without an exit status")

    async def kill(self) -> None:
        """Close the stream (idempotent); see the module docstring for what that kills."""
        if self._killed:
            return
        self._killed = True
        self._reader.cancel()  # it may wait for room; aiohttp's close reads what is left
        await asyncio.gather(self._reader, return_exceptions=True)
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            await self._ws.close()

    async def _send(self, message: bytes) -> None:
        if self._ws.closed:
            return  # the command has ended; like a write to a closed pipe, nothing to do
        async with self._send_lock:
            try:
                await self._ws.send_bytes(message)
            except (aiohttp.ClientError, ConnectionResetError) as exc:
                log.debug("exec %s: write after the stream ended: %s", self._target, exc)


async def open_pod_exec(
    api_client: k8s.ApiClient,
    *,
    namespace: str,
    pod: str,
    container: str,
    spec: ExecSpec,
) -> PodExecSession:
    """Start ``spec`` in ``container`` of ``pod``; ``ApiError`` if the API server refuses,
    ``DriverError`` if it answers in a protocol version shellgate does not speak.

    The session starts at the terminal size ``spec`` asks for. The kubelet applies the first
    resize as the process starts, so a command that reads its size at once may still see the
    runtime's default; that race is the same for ``kubectl exec``.
    """
    configuration = api_client.configuration
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}/exec"
    url = str(configuration.host).rstrip("/") + path
    headers: dict[str, str] = {"User-Agent": str(api_client.user_agent)}
    await api_client.update_params_for_auth(headers, [], ["BearerToken"])
    argv = channel.command_line(spec.command, workdir=spec.workdir, environment=spec.environment)
    target = f"pod {namespace}/{pod}"
    try:
        async with asyncio.timeout(HANDSHAKE_TIMEOUT):
            ws = await api_client.rest_client.pool_manager.ws_connect(
                url,
                params=channel.exec_query(argv, container=container, tty=spec.tty),
                protocols=channel.PROTOCOLS,
                headers=headers,
                proxy=configuration.proxy or None,
                max_msg_size=MAX_MESSAGE,
            )
    except aiohttp.WSServerHandshakeError as exc:
        raise ApiError(exc.status, _refusal(exc.status, target)) from exc
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise ApiError(0, f"cannot reach the API server for exec: {exc}") from exc
    if ws.protocol not in channel.PROTOCOLS:
        await ws.close()
        raise DriverError(
            f"exec in {target}: the API server chose no channel protocol shellgate speaks "
            f"({ws.protocol!r}; offered {', '.join(channel.PROTOCOLS)})"
        )
    session = PodExecSession(ws, tty=spec.tty, target=target)
    if spec.tty and spec.cols and spec.rows:
        await session.resize(spec.cols, spec.rows)
    return session


async def pod_phase(api_client: k8s.ApiClient, *, namespace: str, pod: str) -> str:
    """The pod's phase (``Pending``, ``Running``, ...): why an exec may have been refused."""
    found = await k8s.CoreV1Api(api_client).read_namespaced_pod(
        pod, namespace, _request_timeout=HANDSHAKE_TIMEOUT
    )
    return str(found.status.phase or "Unknown") if found.status is not None else "Unknown"


def _refusal(status: int, target: str) -> str:
    """What a refused exec handshake means (the API server's body is not available here)."""
    reasons = {
        400: "the pod is not running, or the container does not exist",
        401: "the credentials were refused",
        403: "forbidden: the Role must grant create on pods/exec",
        404: "no such pod",
    }
    return f"exec in {target} refused ({status}): {reasons.get(status, 'see the API server')}"
