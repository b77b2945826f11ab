"""ExecSandbox, ExecSandboxInteractive and GetSandboxLogs: use a running sandbox.

Each call checks its request's shape and bounds, finds the sandbox and requires it READY
(FAILED_PRECONDITION naming the phase otherwise). When another replica runs the sandbox (the
local driver's owner), the call is relayed there (``forwarding``); else the driver runs the
command (``ExecDriver.open_exec``) and its output is streamed as it is produced, in chunks of
at most ``CHUNK_BYTES``, followed by one exit event.

The command never outlives the call: when the client cancels or goes away, gRPC cancels this
handler, and the ``finally`` kills the command's process group. ``execution_timeout`` arms a
timer that kills it; the output produced until then has been sent, and the call ends with
DEADLINE_EXCEEDED instead of an exit event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.protobuf.message import DecodeError

from shellgate.api import openshell_pb2
from shellgate.controller.auth.authorize import authorize, enforceable_rule
from shellgate.controller.drivers.base import PlatformEvent
from shellgate.controller.drivers.exec import (
    CommandNotStarted,
    ExecDriver,
    ExecSession,
    ExecSpec,
    LogLine,
    LogQuery,
)
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import RequestError, status_for
from shellgate.controller.service.forwarding import (
    Owner,
    PeerStatus,
    needs_forwarding,
    refuse_misrouted,
    relay_stream,
)
from shellgate.controller.service.requests import find_sandbox, single_workspace
from shellgate.reconcilers import logs as log_rules
from shellgate.reconcilers.errors import FailedPrecondition, InvalidArgument
from shellgate.reconcilers.phase import READY
from shellgate.reconcilers.validation import (
    DEFAULT_LOG_LINES,
    MAX_LOG_BYTES,
    MAX_LOG_LINES,
    MAX_LOG_SOURCES,
    require_valid,
    validate_exec_request,
    validate_window_size,
)
from shellgate.store.deadline import deadline_in

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 * 1024
Event = openshell_pb2.ExecSandboxEvent
Sandbox = openshell_pb2.Sandbox


# ---- ExecSandbox ---------------------------------------------------------------------------


RULES = {
    method: enforceable_rule(method)
    for method in ("ExecSandbox", "ExecSandboxInteractive", "GetSandboxLogs")
}
"""Each method's authorization rule, checked when this module loads (see the servicer)."""


async def exec_sandbox(
    gw: Gateway, request: openshell_pb2.ExecSandboxRequest, context: Any
) -> AsyncIterator[Event]:
    async with _Served(gw, "ExecSandbox", context):
        await authorize(gw, "ExecSandbox", RULES["ExecSandbox"], request)
        async with _exec_slot(gw):
            async for event in _exec(gw, request, context):
                yield event


async def _exec(
    gw: Gateway, request: openshell_pb2.ExecSandboxRequest, context: Any
) -> AsyncIterator[Event]:
    spec = exec_spec(request)
    sandbox = await _ready_sandbox(gw, request, context)
    if needs_forwarding(gw, sandbox, context):
        async with Owner(gw, sandbox, context) as (owner, stub):
            call = stub.ExecSandbox(request, **owner.call_options())
            async for event in relay_stream(owner, call):
                yield event
        return
    session = await _open(gw, sandbox, spec)
    feeding = asyncio.create_task(_feed(session, request.stdin))
    try:
        async for event in _run(session, _timeout_seconds(request), spec.request_id):
            yield event
    finally:
        feeding.cancel()
        await session.kill()


@contextlib.asynccontextmanager
async def _exec_slot(gw: Gateway) -> AsyncIterator[None]:
    """One of the replica's ``--max-exec-sessions`` for the whole call, or RESOURCE_EXHAUSTED
    at once (never queued)."""
    if not gw.exec_slots.take():
        raise RequestError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"this replica runs at most {gw.exec_slots.capacity} exec calls; retry later",
        )
    try:
        yield
    finally:
        gw.exec_slots.give_back()


def exec_spec(request: openshell_pb2.ExecSandboxRequest) -> ExecSpec:
    require_valid(validate_exec_request(request))
    return ExecSpec(
        command=tuple(request.command),
        workdir=request.workdir,
        environment=dict(request.environment),
        tty=request.tty,
        cols=request.cols,
        rows=request.rows,
        login_shell=not request.no_login_shell,
        request_id=request.request_id,
    )


async def _ready_sandbox(
    gw: Gateway, request: openshell_pb2.ExecSandboxRequest, context: Any
) -> Sandbox:
    refuse_misrouted(gw, context)
    sandbox = await find_sandbox(gw, request.sandbox, single_workspace(request.workspace_scope))
    if sandbox.status.phase != READY:
        phase = openshell_pb2.SandboxPhase.Name(sandbox.status.phase)
        raise FailedPrecondition(
            f"sandbox {request.sandbox!r} is {phase.removeprefix('SANDBOX_PHASE_')}, not READY",
            phase,
        )
    return sandbox


async def _open(gw: Gateway, sandbox: Sandbox, spec: ExecSpec) -> ExecSession:
    driver = _exec_driver(gw)
    log.info(
        "exec in sandbox %s (%s): %d arguments, tty %s, request %s",
        sandbox.metadata.name,
        sandbox.metadata.id,
        len(spec.command),
        spec.tty,
        spec.request_id or "-",
    )
    try:
        return await driver.open_exec(sandbox, spec)
    except CommandNotStarted as exc:
        raise FailedPrecondition(str(exc), "COMMAND_NOT_STARTED") from exc


def _exec_driver(gw: Gateway) -> ExecDriver:
    if not isinstance(gw.driver, ExecDriver):
        raise RequestError(
            grpc.StatusCode.UNIMPLEMENTED, f"the {gw.driver.name} driver cannot run commands"
        )
    return gw.driver


def _timeout_seconds(request: openshell_pb2.ExecSandboxRequest) -> float | None:
    timeout = request.execution_timeout
    seconds = timeout.seconds + timeout.nanos / 1e9
    return seconds if seconds > 0 else None


async def _feed(session: ExecSession, stdin: bytes) -> None:
    """The request's stdin, then end of input (a command reading stdin must not wait)."""
    with contextlib.suppress(OSError):
        await session.write_stdin(stdin)
    await session.close_stdin()


async def _run(
    session: ExecSession, timeout_s: float | None, request_id: str
) -> AsyncIterator[Event]:
    """The command's output as it comes, then its exit; DEADLINE_EXCEEDED past the timeout."""
    killing: list[asyncio.Future[None]] = []

    def expire() -> None:
        killing.append(asyncio.ensure_future(session.kill()))

    loop = asyncio.get_running_loop()
    timer = loop.call_later(timeout_s, expire) if timeout_s is not None else None
    outputs = session.output()
    try:
        async for output in outputs:
            for start in range(0, len(output.data), CHUNK_BYTES):
                chunk = output.data[start : start + CHUNK_BYTES]
                if output.stream == "stderr":
                    yield Event(stderr=openshell_pb2.ExecSandboxStderr(data=chunk))
                else:
                    yield Event(stdout=openshell_pb2.ExecSandboxStdout(data=chunk))
        exit_code = await session.wait()
    finally:
        if timer is not None:
            timer.cancel()
        close = getattr(outputs, "aclose", None)
        if close is not None:  # now, not when collected: the caller went away mid-output
            await close()
    if killing:
        log.info("exec (request %s) killed after its %.1f s timeout", request_id or "-", timeout_s)
        raise RequestError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"the command did not finish within its execution_timeout of {timeout_s:g} s "
            "and was killed",
        )
    yield Event(exit=openshell_pb2.ExecSandboxExit(exit_code=exit_code))


# ---- ExecSandboxInteractive ----------------------------------------------------------------


async def exec_sandbox_interactive(
    gw: Gateway, requests: AsyncIterator[openshell_pb2.ExecSandboxInput], context: Any
) -> AsyncIterator[Event]:
    """Authorized on the first message before it takes an exec slot, as ExecSandbox is: a
    caller the table refuses hears PERMISSION_DENIED however busy the replica is, and a
    stream that has not yet named its workspace holds no slot another caller could use."""
    async with _Served(gw, "ExecSandboxInteractive", context):
        first = await _first_message(requests)
        await authorize(gw, "ExecSandboxInteractive", RULES["ExecSandboxInteractive"], first.start)
        async with _exec_slot(gw):
            async for event in _interactive(gw, first, requests, context):
                yield event


async def _first_message(
    requests: AsyncIterator[openshell_pb2.ExecSandboxInput],
) -> openshell_pb2.ExecSandboxInput:
    """The call's ``start``: it names the sandbox, the workspace and the command."""
    try:
        first = await anext(aiter(requests), None)
    except DecodeError as exc:
        raise _undecodable() from exc
    if first is None or first.WhichOneof("payload") != "start":
        raise InvalidArgument.single("start", "the first message must be start")
    return first


async def _interactive(
    gw: Gateway,
    first: openshell_pb2.ExecSandboxInput,
    requests: AsyncIterator[openshell_pb2.ExecSandboxInput],
    context: Any,
) -> AsyncIterator[Event]:
    start = first.start
    spec = exec_spec(start)
    sandbox = await _ready_sandbox(gw, start, context)
    if needs_forwarding(gw, sandbox, context):
        async for event in _forward_interactive(gw, sandbox, first, requests, context):
            yield event
        return
    session = await _open(gw, sandbox, spec)
    refused: list[Exception] = []
    pumping = asyncio.create_task(_pump_input(session, start.stdin, requests, refused))
    try:
        async for event in _run(session, _timeout_seconds(start), spec.request_id):
            if refused:
                raise refused[0]
            yield event
    finally:
        pumping.cancel()
        await session.kill()


def _undecodable() -> RequestError:
    return RequestError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "a message does not decode as a valid ExecSandboxInput",
    )


async def _pump_input(
    session: ExecSession,
    first: bytes,
    requests: AsyncIterator[openshell_pb2.ExecSandboxInput],
    refused: list[Exception],
) -> None:
    """stdin and window sizes as the client sends them; its half-close ends the input. A
    message that does not decode ends the call: recorded in ``refused``, command killed."""
    try:
        await session.write_stdin(first)
        async for message in requests:
            kind = message.WhichOneof("payload")
            if kind == "stdin":
                await session.write_stdin(message.stdin)
            elif kind == "resize":
                size = message.resize
                if not validate_window_size(size.cols, size.rows):
                    await session.resize(size.cols, size.rows)
            else:
                log.info("exec: ignoring a second start message")
        await session.close_stdin()
    except (OSError, grpc.RpcError) as exc:  # the command or the client went away
        log.debug("exec input ended: %s", exc)
    except DecodeError:
        refused.append(_undecodable())
        await session.kill()


async def _forward_interactive(
    gw: Gateway,
    sandbox: Sandbox,
    first: openshell_pb2.ExecSandboxInput,
    requests: AsyncIterator[openshell_pb2.ExecSandboxInput],
    context: Any,
) -> AsyncIterator[Event]:
    refused: list[Exception] = []
    calls: list[Any] = []

    async def inputs() -> AsyncIterator[openshell_pb2.ExecSandboxInput]:
        yield first
        try:
            async for message in requests:
                yield message
        except DecodeError:
            refused.append(_undecodable())
            calls[0].cancel()  # the owner kills the command

    async with Owner(gw, sandbox, context) as (owner, stub):
        call = stub.ExecSandboxInteractive(inputs(), **owner.call_options())
        calls.append(call)
        try:
            async for event in relay_stream(owner, call):
                yield event
        except (PeerStatus, RequestError, asyncio.CancelledError):
            if not refused:  # a locally cancelled call raises CancelledError when read
                raise
        if refused:
            raise refused[0]


# ---- GetSandboxLogs ------------------------------------------------------------------------


async def get_sandbox_logs(
    gw: Gateway, request: openshell_pb2.GetSandboxLogsRequest, context: Any
) -> openshell_pb2.GetSandboxLogsResponse:
    async with _Served(gw, "GetSandboxLogs", context):
        await authorize(gw, "GetSandboxLogs", RULES["GetSandboxLogs"], request)
        return await _logs(gw, request, context)
    raise AssertionError("unreachable: an error aborts the call")


async def _logs(
    gw: Gateway, request: openshell_pb2.GetSandboxLogsRequest, context: Any
) -> openshell_pb2.GetSandboxLogsResponse:
    if request.lines > MAX_LOG_LINES:
        raise InvalidArgument.single(
            "lines", f"lines exceeds maximum of {MAX_LOG_LINES} (got {request.lines})"
        )
    sources = log_rules.parse_sources(request.sources, MAX_LOG_SOURCES)
    min_rank = log_rules.parse_min_level(request.min_level)
    refuse_misrouted(gw, context)
    sandbox = await find_sandbox(gw, request.sandbox, single_workspace(request.workspace_scope))
    if needs_forwarding(gw, sandbox, context):
        async with Owner(gw, sandbox, context) as (owner, stub):
            try:
                response: openshell_pb2.GetSandboxLogsResponse = await stub.GetSandboxLogs(
                    request, **owner.call_options()
                )
            except grpc.aio.AioRpcError as error:
                raise owner.relay_error(error) from None
            return response
    since_ms = request.since_time.ToMilliseconds() if request.HasField("since_time") else 0
    query = LogQuery(
        lines=request.lines, since_ms=since_ms, sources=tuple(sources), min_level=request.min_level
    )
    lines: list[LogLine] = []
    if "sandbox" in sources and isinstance(gw.driver, ExecDriver):
        lines += await gw.driver.read_logs(sandbox, query)
    if "gateway" in sources:
        lines += [_event_line(e) for e in gw.events.tail(sandbox.metadata.id, 1 << 16)]
    selected, total = log_rules.select_lines(
        lines,
        since_ms=since_ms,
        sources=sources,
        min_rank=min_rank,
        limit=request.lines or DEFAULT_LOG_LINES,
        max_bytes=MAX_LOG_BYTES,
    )
    return openshell_pb2.GetSandboxLogsResponse(
        logs=[_log_message(sandbox.metadata.id, line) for line in selected],
        buffer_total=total,
    )


def _event_line(event: PlatformEvent) -> LogLine:
    return LogLine(
        timestamp_ms=event.timestamp_ms,
        level="WARN" if event.type == "Warning" else "INFO",
        source="gateway",
        message=f"{event.reason}: {event.message}" if event.message else event.reason,
        target=event.source,
    )


def _log_message(sandbox_id: str, line: LogLine) -> openshell_pb2.SandboxLogLine:
    when = timestamp_pb2.Timestamp()
    when.FromMilliseconds(line.timestamp_ms)
    return openshell_pb2.SandboxLogLine(
        sandbox_id=sandbox_id,
        event_time=when,
        level=line.level,
        target=line.target,
        message=line.message,
        source=line.source,
    )


# ---- the shell every call here shares -------------------------------------------------------


class _Served:
    """Time and count a call by status code, run it under the caller's deadline, and turn
    an error into its rich status (an owner's relayed status as it came), as ``rpc`` does for
    the unary calls of the servicer."""

    def __init__(self, gw: Gateway, method: str, context: Any) -> None:
        self._gw = gw
        self._method = method
        self._context = context
        self._started = 0.0
        self._deadline: contextlib.ExitStack | None = None

    async def __aenter__(self) -> None:
        self._started = time.perf_counter()
        self._deadline = contextlib.ExitStack()
        self._deadline.enter_context(deadline_in(self._context.time_remaining()))

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> bool:
        with contextlib.suppress(ValueError):  # closed from another context: nothing to reset
            assert self._deadline is not None
            self._deadline.close()
        code = "OK"
        status: grpc.Status | None = None
        if isinstance(exc, PeerStatus):
            status = exc.status
        elif isinstance(exc, Exception):
            status = status_for(exc, self._method)
        elif exc is not None:
            code = "CANCELLED"  # the client went away, or the server is stopping
        if status is not None:
            code = status.code.name
        metrics = self._gw.metrics
        metrics.grpc_requests.labels(method=self._method, code=code).inc()
        metrics.grpc_duration.labels(method=self._method).observe(
            time.perf_counter() - self._started
        )
        if status is not None:
            await self._context.abort_with_status(status)
        return False
