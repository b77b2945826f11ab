"""Exec and logs through the Kubernetes driver, over a real websocket to the emulator's
``pods/exec`` and HTTP to its ``pods/log`` (tests/support/pod_runtime.py), with real local
processes standing in for the container.

The driver is called directly (``open_exec`` / ``read_logs``), as the gRPC handlers will.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kmock import KubernetesEmulator
from kubernetes_asyncio import client as k8s

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.base import DriverError
from shellgate.controller.drivers.exec import CommandNotStarted, ExecOutput, ExecSpec, LogQuery
from shellgate.controller.drivers.kubernetes import KubernetesDriver
from shellgate.controller.drivers.kubernetes.channel import V4_PROTOCOL, V5_PROTOCOL
from shellgate.controller.drivers.kubernetes.client import configuration_for, fixed_login
from shellgate.controller.drivers.kubernetes.exec import KILLED_STATUS, OUTPUT_CHUNK, OUTPUT_QUEUE
from shellgate.controller.drivers.kubernetes.logs import MAX_LINES
from shellgate.controller.drivers.kubernetes.manifest import SANDBOX_ID_LABEL
from tests.k8s.conftest import make_driver, until
from tests.support.k8s_emulator import NAMESPACE, collection_url, object_url
from tests.support.k8s_processes import KmockProcess
from tests.support.objects import sandbox as sandbox_message
from tests.support.pod_runtime import V4, ExecRecord, Pod, PodRuntime

pytestmark = pytest.mark.timeout(30)

SECOND_NS = 1_000_000_000
T0_NS = 1_795_000_000 * SECOND_NS  # 2026-11-18, a whole second


@pytest.fixture
def runtime(emulator: KubernetesEmulator) -> PodRuntime:
    runtime = PodRuntime()
    emulator.pod_runtime = runtime  # type: ignore[attr-defined]
    return runtime


async def stored_object(emulator: KubernetesEmulator, sandbox_id: str) -> dict[str, Any]:
    """The Sandbox object the driver made for ``sandbox_id`` (found by its label, whatever
    the driver named it)."""
    response = await emulator.get(collection_url())
    for body in (await response.json())["items"]:
        labels = body.get("metadata", {}).get("labels") or {}
        if labels.get(SANDBOX_ID_LABEL) == sandbox_id:
            return dict(body)
    raise AssertionError(f"no Sandbox object for {sandbox_id}")


async def sandbox_with_pod(
    driver: KubernetesDriver, emulator: KubernetesEmulator, runtime: PodRuntime, root: Path
) -> tuple[openshell_pb2.Sandbox, Pod]:
    """A sandbox whose object exists and whose pod (named after the object, as the
    agent-sandbox controller names it without a warm pool) runs in ``root``."""
    message = sandbox_message()
    await driver.create_sandbox(message)
    name = (await stored_object(emulator, message.metadata.id))["metadata"]["name"]
    return message, runtime.add_pod(NAMESPACE, name, root)


@pytest.fixture
async def ready(
    driver: KubernetesDriver, emulator: KubernetesEmulator, runtime: PodRuntime, tmp_path: Path
) -> tuple[openshell_pb2.Sandbox, Pod]:
    return await sandbox_with_pod(driver, emulator, runtime, tmp_path)


async def collect(session: Any) -> tuple[bytes, bytes, list[ExecOutput]]:
    chunks = [chunk async for chunk in session.output()]
    out = b"".join(c.data for c in chunks if c.stream == "stdout")
    err = b"".join(c.data for c in chunks if c.stream == "stderr")
    return out, err, chunks


async def read_until(session: Any, stream: Iterator[Any] | Any, wanted: bytes) -> bytes:
    """Read output chunks from the iterator ``stream`` until ``wanted`` has appeared."""
    seen = b""
    while wanted not in seen:
        chunk = await asyncio.wait_for(anext(stream), 10)
        seen += chunk.data
    return seen


def last_exec(runtime: PodRuntime) -> ExecRecord:
    assert runtime.execs, "no exec reached the emulator"
    return runtime.execs[-1]


# ---- exec ---------------------------------------------------------------------------------


async def test_stdout_and_stderr_arrive_apart_with_the_exit_code(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod], runtime: PodRuntime
) -> None:
    sandbox, _pod = ready
    spec = ExecSpec(command=("sh", "-c", "echo out; echo err >&2; echo more; exit 3"))
    session = await driver.open_exec(sandbox, spec)
    out, err, _ = await collect(session)
    assert (out, err) == (b"out\nmore\n", b"err\n")
    assert await session.wait() == 3
    record = last_exec(runtime)
    assert record.protocol == V5_PROTOCOL
    assert record.exit_code == 3
    assert ("container", "sandbox") in record.query
    assert [v for k, v in record.query if k == "command"] == list(spec.command)


async def test_arguments_reach_the_command_byte_for_byte(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod]
) -> None:
    """Each argument is one query parameter: ``+``, ``&``, ``=``, ``%``, spaces and non-ASCII
    must survive the URL encoding."""
    arguments = ("a+b", "c&d=e", "100%20", " two  spaces ", "é€", "$HOME", "")
    session = await driver.open_exec(ready[0], ExecSpec(command=("printf", "[%s]", *arguments)))
    out, _err, _ = await collect(session)
    assert out.decode() == "".join(f"[{a}]" for a in arguments)
    assert await session.wait() == 0


async def test_success_is_exit_code_zero(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod]
) -> None:
    session = await driver.open_exec(ready[0], ExecSpec(command=("true",)))
    assert await session.wait() == 0


async def test_stdin_is_streamed_and_closing_it_ends_the_command(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod], runtime: PodRuntime
) -> None:
    session = await driver.open_exec(ready[0], ExecSpec(command=("sh", "-c", "cat; echo done")))
    await session.write_stdin(b"hello ")
    await session.write_stdin(b"world\n")
    await session.close_stdin()
    out, err, _ = await collect(session)
    assert (out, err) == (b"hello world\ndone\n", b"")
    assert await session.wait() == 0
    assert last_exec(runtime).stdin_closed
    with pytest.raises(BrokenPipeError, match="is closed"):
        await session.write_stdin(b"late")


async def test_output_is_streamed_as_the_command_writes_it(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod]
) -> None:
    """The first line arrives while the command still waits for input: nothing is held
    back until the end."""
    session = await driver.open_exec(
        ready[0], ExecSpec(command=("sh", "-c", "echo first; read line; echo second $line"))
    )
    stream = aiter(session.output())
    assert await read_until(session, stream, b"first\n") == b"first\n"
    await session.write_stdin(b"go\n")
    assert await read_until(session, stream, b"second go\n") == b"second go\n"
    assert await session.wait() == 0


async def test_large_output_comes_in_bounded_chunks(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod]
) -> None:
    size = 5 * OUTPUT_CHUNK + 123
    session = await driver.open_exec(
        ready[0], ExecSpec(command=("head", "-c", str(size), "/dev/zero"))
    )
    out, _err, chunks = await collect(session)
    assert len(out) == size
    assert max(len(c.data) for c in chunks) <= OUTPUT_CHUNK
    assert await session.wait() == 0


async def test_a_reader_that_falls_behind_holds_the_command_back(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod], runtime: PodRuntime
) -> None:
    """Output waits in a bounded buffer: while nobody reads, the command is held back by the
    websocket's flow control instead of its output piling up in the gateway."""
    size = 32 * 1024 * 1024
    session = await driver.open_exec(
        ready[0], ExecSpec(command=("head", "-c", str(size), "/dev/zero"))
    )
    await asyncio.sleep(1.0)
    assert not last_exec(runtime).done.is_set(), "the command ran to its end unread"
    assert session._queue.qsize() <= OUTPUT_QUEUE + 1  # chunks, plus perhaps the end
    total = 0
    async for chunk in session.output():
        total += len(chunk.data)
    assert total == size
    assert await session.wait() == 0


async def test_terminal_size_and_resize_are_seen_by_the_command(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod], runtime: PodRuntime
) -> None:
    spec = ExecSpec(
        command=("sh", "-c", "read a; stty size; read b; stty size"), tty=True, cols=100, rows=30
    )
    session = await driver.open_exec(ready[0], spec)
    stream = aiter(session.output())
    await session.write_stdin(b"a\n")
    assert b"30 100" in await read_until(session, stream, b"30 100")
    await session.resize(120, 40)
    await session.write_stdin(b"b\n")
    assert b"40 120" in await read_until(session, stream, b"40 120")
    assert await session.wait() == 0
    record = last_exec(runtime)
    assert record.resizes == [(100, 30), (120, 40)]
    assert ("tty", "true") in record.query
    assert ("stderr", "false") in record.query  # a terminal has one output stream


async def test_v4_server_is_spoken_to_in_v4(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod], runtime: PodRuntime
) -> None:
    runtime.protocols = (V4,)
    session = await driver.open_exec(
        ready[0], ExecSpec(command=("sh", "-c", "echo v4 out; echo v4 err >&2; exit 5"))
    )
    assert session.protocol == V4_PROTOCOL
    await session.close_stdin()  # v4 has no signal for it: nothing is sent
    out, err, _ = await collect(session)
    assert (out, err) == (b"v4 out\n", b"v4 err\n")
    assert await session.wait() == 5
    record = last_exec(runtime)
    assert record.protocol == V4_PROTOCOL
    assert not record.stdin_closed


async def test_a_server_without_v4_or_v5_is_refused(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod], runtime: PodRuntime
) -> None:
    runtime.protocols = ("channel.k8s.io",)
    with pytest.raises(DriverError, match="400"):
        await driver.open_exec(ready[0], ExecSpec(command=("true",)))


async def test_a_handshake_without_a_subprotocol_is_refused_by_the_client(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod], runtime: PodRuntime
) -> None:
    """Without v4 or v5 there is no Status on the error channel, so no exit code: shellgate
    does not guess."""
    runtime.protocols = ("channel.k8s.io",)
    runtime.refuse_unknown_protocols = False
    with pytest.raises(DriverError, match="no channel protocol shellgate speaks"):
        await driver.open_exec(ready[0], ExecSpec(command=("true",)))


async def test_kill_closes_the_stream_and_the_command_goes(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod], runtime: PodRuntime
) -> None:
    session = await driver.open_exec(
        ready[0], ExecSpec(command=("sh", "-c", "echo $$; exec sleep 60"))
    )
    stream = aiter(session.output())
    pid = int(await read_until(session, stream, b"\n"))
    await session.kill()
    record = last_exec(runtime)
    await asyncio.wait_for(record.done.wait(), 10)
    assert record.killed_by_close and record.pid == pid, (record.pid, pid, record.exit_code)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert [chunk async for chunk in stream] == []
    assert await session.wait() == KILLED_STATUS
    await session.kill()  # idempotent
    await session.write_stdin(b"ignored")  # the stream is gone: dropped, like a closed pipe


async def test_kill_after_exit_keeps_the_exit_code(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod]
) -> None:
    session = await driver.open_exec(ready[0], ExecSpec(command=("sh", "-c", "exit 4")))
    assert await session.wait() == 4
    await session.kill()
    assert await session.wait() == 4


async def test_workdir_and_environment_reach_the_command(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod], tmp_path: Path
) -> None:
    workdir = tmp_path / "work dir"
    workdir.mkdir()
    spec = ExecSpec(
        command=("sh", "-c", 'pwd; printf "%s\\n" "$GREETING"'),
        workdir=str(workdir),
        environment={"GREETING": "hello; $(not run)"},
    )
    session = await driver.open_exec(ready[0], spec)
    out, err, _ = await collect(session)
    assert (out, err) == (f"{workdir}\nhello; $(not run)\n".encode(), b"")
    assert await session.wait() == 0


async def test_missing_workdir_fails_with_126(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod], tmp_path: Path
) -> None:
    spec = ExecSpec(command=("true",), workdir=str(tmp_path / "absent"))
    session = await driver.open_exec(ready[0], spec)
    _out, err, _ = await collect(session)
    assert b"absent" in err
    assert await session.wait() == 126


async def test_a_command_that_cannot_start_is_a_driver_error(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod]
) -> None:
    session = await driver.open_exec(ready[0], ExecSpec(command=("/no/such/program",)))
    await collect(session)
    with pytest.raises(DriverError, match="/no/such/program"):
        await session.wait()


async def test_exec_goes_to_the_pod_the_controller_annotated(
    driver: KubernetesDriver,
    emulator: KubernetesEmulator,
    runtime: PodRuntime,
    tmp_path: Path,
) -> None:
    """A warm-pool pod adopted by the controller keeps its own name, recorded in the
    ``agents.x-k8s.io/pod-name`` annotation; exec must go there, not to the object's name."""
    message = sandbox_message()
    await driver.create_sandbox(message)
    name = (await stored_object(emulator, message.metadata.id))["metadata"]["name"]
    patch = {"metadata": {"annotations": {"agents.x-k8s.io/pod-name": "warm-pod-7"}}}
    response = await emulator.patch(object_url(name), json=patch)
    assert response.status == 200
    runtime.add_pod(NAMESPACE, "warm-pod-7", tmp_path)
    session = await driver.open_exec(message, ExecSpec(command=("true",)))
    assert await session.wait() == 0
    assert last_exec(runtime).pod == "warm-pod-7"


async def test_a_pod_that_does_not_exist_is_a_driver_error(
    driver: KubernetesDriver, emulator: KubernetesEmulator, runtime: PodRuntime
) -> None:
    message = sandbox_message()
    await driver.create_sandbox(message)
    with pytest.raises(CommandNotStarted, match=r"\(404\).* does not exist"):
        await driver.open_exec(message, ExecSpec(command=("true",)))


async def test_a_pod_not_running_yet_is_named_in_the_error(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod]
) -> None:
    sandbox, pod = ready
    pod.phase = "Pending"
    with pytest.raises(CommandNotStarted, match=r"\(400\).* is Pending"):
        await driver.open_exec(sandbox, ExecSpec(command=("true",)))


async def test_a_sandbox_without_an_object_is_a_driver_error(
    driver: KubernetesDriver, runtime: PodRuntime
) -> None:
    with pytest.raises(DriverError, match="no Sandbox object"):
        await driver.open_exec(sandbox_message(), ExecSpec(command=("true",)))


async def test_any_replica_can_exec_in_any_sandbox(
    emulator: KubernetesEmulator,
    driver: KubernetesDriver,
    ready: tuple[openshell_pb2.Sandbox, Pod],
    runtime: PodRuntime,
) -> None:
    """A second driver that never saw the sandbox (no index entry, no ownership) finds its
    object by label and runs the command."""
    other = make_driver(str(emulator.url).rstrip("/"))
    await other.start()
    try:
        await until(lambda: other.watch_ready)
        session = await other.open_exec(ready[0], ExecSpec(command=("sh", "-c", "echo other")))
        out, _err, _ = await collect(session)
        assert out == b"other\n"
        assert await session.wait() == 0
    finally:
        await other.close()


# ---- logs ---------------------------------------------------------------------------------


async def test_logs_are_the_newest_lines_oldest_first_with_their_times(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod]
) -> None:
    sandbox, pod = ready
    for i in range(10):
        pod.write_log(f"line {i}", at_ns=T0_NS + i * SECOND_NS + 250_000_000)
    lines = await driver.read_logs(sandbox, LogQuery(lines=3))
    assert [line.message for line in lines] == ["line 7", "line 8", "line 9"]
    assert [line.timestamp_ms for line in lines] == [
        (T0_NS + i * SECOND_NS) // 1_000_000 + 250 for i in (7, 8, 9)
    ]
    assert {(line.source, line.level) for line in lines} == {("sandbox", "INFO")}


async def test_logs_since_a_time_within_a_second(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod]
) -> None:
    """The API takes whole seconds; lines earlier in the same second are dropped here."""
    sandbox, pod = ready
    pod.write_log("before", at_ns=T0_NS - 1)
    pod.write_log("early in the second", at_ns=T0_NS + 200_000_000)
    pod.write_log("at the cut", at_ns=T0_NS + 500_000_000)
    pod.write_log("after", at_ns=T0_NS + 2 * SECOND_NS)  # exact second: no fraction on the wire
    since_ms = T0_NS // 1_000_000 + 500
    lines = await driver.read_logs(sandbox, LogQuery(since_ms=since_ms))
    assert [line.message for line in lines] == ["at the cut", "after"]
    assert lines[1].timestamp_ms == (T0_NS + 2 * SECOND_NS) // 1_000_000


async def test_logs_are_bounded_without_a_line_count(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod]
) -> None:
    sandbox, pod = ready
    for i in range(MAX_LINES + 50):
        pod.write_log(f"n{i}", at_ns=T0_NS + i * 1_000_000)
    lines = await driver.read_logs(sandbox, LogQuery())
    assert len(lines) == MAX_LINES
    assert lines[0].message == "n50" and lines[-1].message == f"n{MAX_LINES + 49}"
    assert [line.timestamp_ms for line in lines] == sorted(line.timestamp_ms for line in lines)


async def test_logs_keep_spaces_and_empty_output_is_no_lines(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod]
) -> None:
    sandbox, pod = ready
    assert await driver.read_logs(sandbox, LogQuery()) == []
    pod.write_log("  indented  text", at_ns=T0_NS)
    [line] = await driver.read_logs(sandbox, LogQuery())
    assert line.message == "  indented  text"


async def test_logs_of_other_sources_or_higher_levels_are_empty(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod]
) -> None:
    sandbox, pod = ready
    pod.write_log("hello", at_ns=T0_NS)
    assert await driver.read_logs(sandbox, LogQuery(sources=("gateway",))) == []
    assert await driver.read_logs(sandbox, LogQuery(min_level="WARN")) == []
    assert (
        len(await driver.read_logs(sandbox, LogQuery(sources=("sandbox",), min_level="info"))) == 1
    )


async def test_logs_of_a_sandbox_without_a_pod_are_empty(
    driver: KubernetesDriver, emulator: KubernetesEmulator, runtime: PodRuntime
) -> None:
    message = sandbox_message()
    await driver.create_sandbox(message)
    assert await driver.read_logs(message, LogQuery()) == []


async def test_logs_of_a_pod_still_starting_are_empty(
    driver: KubernetesDriver, ready: tuple[openshell_pb2.Sandbox, Pod]
) -> None:
    sandbox, pod = ready
    pod.write_log("not yet", at_ns=T0_NS)
    pod.phase = "Pending"  # the API server refuses: the container is waiting to start
    assert await driver.read_logs(sandbox, LogQuery()) == []
    pod.phase = "Running"
    assert [line.message for line in await driver.read_logs(sandbox, LogQuery())] == ["not yet"]


# ---- credentials --------------------------------------------------------------------------


async def test_exec_and_logs_send_the_token_and_log_in_again_after_a_401(
    emulator: KubernetesEmulator, runtime: PodRuntime, tmp_path: Path
) -> None:
    """The websocket handshake carries the same bearer token as every other request, and a
    refused token is renewed once, as for the driver's other calls."""
    logins: list[str] = []

    async def login() -> k8s.Configuration:
        logins.append("old" if not logins else "new")
        return configuration_for(str(emulator.url).rstrip("/"), token=logins[-1])

    driver = KubernetesDriver(
        login=login, namespace=NAMESPACE, sandbox_image="example/sandbox:1", version="v1beta1"
    )
    try:
        sandbox, pod = await sandbox_with_pod(driver, emulator, runtime, tmp_path)
        runtime.token = "new"  # the token rotated after the create
        session = await driver.open_exec(sandbox, ExecSpec(command=("true",)))
        assert await session.wait() == 0
        assert logins == ["old", "new"]
        assert last_exec(runtime).headers["Authorization"] == "Bearer new"
        pod.write_log("hello", at_ns=T0_NS)
        runtime.token = "newer"
        with pytest.raises(DriverError, match="401"):
            await driver.read_logs(sandbox, LogQuery())
        assert logins == ["old", "new", "new"]  # one more login, still refused
    finally:
        await driver.close()


# ---- the standalone emulator --------------------------------------------------------------


async def test_the_standalone_emulator_serves_exec_for_end_to_end_tests(tmp_path: Path) -> None:
    """``kmock_server --pod-root`` (for tests with real gateway processes): any pod runs
    commands in the given directory."""
    root = tmp_path / "pods"
    root.mkdir()
    server = KmockProcess(tmp_path / "kmock", pod_root=root)
    server.start()
    driver: KubernetesDriver | None = None
    try:
        await server.wait_ready()
        driver = KubernetesDriver(
            login=fixed_login(configuration_for(server.url)),
            namespace=NAMESPACE,
            sandbox_image="example/sandbox:1",
            version="v1beta1",
        )
        message = sandbox_message()
        await driver.create_sandbox(message)
        session = await driver.open_exec(message, ExecSpec(command=("pwd",)))
        out, _err, _ = await collect(session)
        assert out == f"{root}\n".encode()
        assert await session.wait() == 0
    finally:
        if driver is not None:
            await driver.close()
        server.stop()
