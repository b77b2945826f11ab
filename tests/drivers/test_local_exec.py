"""LocalDriver exec and logs against real processes: environment, working directory, process
groups, a pseudo-terminal, what happens to an exec when its caller or its sandbox goes, and
the bounded log file."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.base import DriverNotOwner
from shellgate.controller.drivers.exec import CommandNotStarted, ExecSession, ExecSpec, LogQuery
from shellgate.controller.drivers.local import LocalDriver
from shellgate.controller.drivers.local_logs import MAX_FILE_BYTES, MAX_LINE_BYTES
from tests.drivers.test_local import alive, gone

pytestmark = pytest.mark.timeout(20)


def sandbox(
    command: list[str] | None = None, env: dict[str, str] | None = None
) -> openshell_pb2.Sandbox:
    message = openshell_pb2.Sandbox()
    message.metadata.id = str(uuid.uuid4())
    message.metadata.name = "exec-test"
    message.spec.command.extend(command or ["sleep", "600"])
    message.spec.environment.update(env or {})
    return message


@pytest.fixture
async def driver(tmp_path: Path) -> AsyncIterator[LocalDriver]:
    d = LocalDriver(state_dir=tmp_path / "state", replica_id="r1", stop_grace_s=1.0)
    await d.start()
    yield d
    await d.close()


async def run(session: ExecSession, stdin: bytes = b"") -> tuple[bytes, bytes, int]:
    await session.write_stdin(stdin)
    await session.close_stdin()
    out = err = b""
    async for chunk in session.output():
        if chunk.stream == "stdout":
            out += chunk.data
        else:
            err += chunk.data
    return out, err, await session.wait()


async def pid_from(session: ExecSession) -> int:
    """The first line the command writes: a pid."""
    async for chunk in session.output():
        return int(chunk.data.split()[0])
    raise AssertionError("no output")


async def test_exec_gets_the_sandbox_environment_and_directory_and_nothing_of_the_gateway(
    driver: LocalDriver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHELLGATE_DATABASE_URL", "postgresql://secret@db/prod")
    box = sandbox(env={"FROM_SPEC": "spec"})
    await driver.create_sandbox(box)
    workdir = driver._root / box.metadata.id
    (workdir / "sub").mkdir()
    spec = ExecSpec(
        command=("sh", "-c", "env; echo CWD=$(pwd)"),
        workdir="sub",
        environment={"FROM_EXEC": "exec"},
    )
    out, err, code = await run(await driver.open_exec(box, spec))
    env = dict(line.split("=", 1) for line in out.decode().splitlines())
    assert code == 0 and err == b""
    assert "SHELLGATE_DATABASE_URL" not in env
    assert env["FROM_SPEC"] == "spec" and env["FROM_EXEC"] == "exec"
    assert env["HOME"] == str(workdir) and env["CWD"] == str(workdir / "sub")
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    out, _err, _code = await run(
        await driver.open_exec(
            box,
            ExecSpec(command=("python", "-c", "import cloudpickle, sys; print(sys.executable)")),
        )
    )
    assert Path(out.decode().strip()).parent == Path(sys.executable).parent


async def test_what_cannot_run_is_refused_before_anything_starts(driver: LocalDriver) -> None:
    box = sandbox()
    await driver.create_sandbox(box)
    for spec in (
        ExecSpec(command=("no-such-program",)),
        ExecSpec(command=("./missing",)),
        ExecSpec(command=("true",), workdir="no/such/dir"),
        ExecSpec(command=("no-such-program",), tty=True),
    ):
        with pytest.raises(CommandNotStarted):
            await driver.open_exec(box, spec)
    await driver.stop_sandbox(box.metadata.id)
    with pytest.raises(CommandNotStarted):
        await driver.open_exec(box, ExecSpec(command=("true",)))


async def test_another_replicas_sandbox_is_refused(tmp_path: Path) -> None:
    owner = LocalDriver(state_dir=tmp_path / "shared", replica_id="r1")
    other = LocalDriver(state_dir=tmp_path / "shared", replica_id="r2")
    await owner.start()
    await other.start()
    try:
        box = sandbox()
        await owner.create_sandbox(box)
        with pytest.raises(DriverNotOwner):
            await other.open_exec(box, ExecSpec(command=("true",)))
        with pytest.raises(DriverNotOwner):
            await other.read_logs(box, LogQuery())
    finally:
        await owner.close()
        await other.close()


async def test_the_command_takes_its_whole_group_with_it(driver: LocalDriver) -> None:
    """A child the command left in the background dies with it, so the output ends."""
    box = sandbox()
    await driver.create_sandbox(box)
    spec = ExecSpec(command=("sh", "-c", "sleep 600 & echo $!"))
    session = await driver.open_exec(box, spec)
    background = await pid_from(session)
    assert await session.wait() == 0
    assert await gone(background)


async def test_a_caller_that_stops_reading_a_flood_can_still_kill_it(driver: LocalDriver) -> None:
    """The output queue fills; closing the output stops its readers, so kill() returns."""
    box = sandbox()
    await driver.create_sandbox(box)
    session = await driver.open_exec(box, ExecSpec(command=("yes", "flood")))
    outputs = session.output()
    await anext(outputs)
    await asyncio.sleep(0.3)  # the queue and the pipe fill
    await outputs.aclose()  # type: ignore[attr-defined]
    await asyncio.wait_for(session.kill(), 5)
    assert await session.wait() in (137, 141)  # SIGKILL, or SIGPIPE once its readers went


async def test_execs_end_with_their_sandbox(driver: LocalDriver) -> None:
    box = sandbox()
    await driver.create_sandbox(box)
    session = await driver.open_exec(box, ExecSpec(command=("sh", "-c", "echo $$; exec sleep 600")))
    pid = await pid_from(session)
    assert alive(pid)
    await driver.stop_sandbox(box.metadata.id)
    assert await gone(pid)
    assert await asyncio.wait_for(session.wait(), 5) == 137


@pytest.mark.timeout(60)  # three interpreter starts; slow on a loaded machine
async def test_a_pty_shows_its_size_and_a_resize_and_sees_input(driver: LocalDriver) -> None:
    box = sandbox()
    await driver.create_sandbox(box)
    program = (
        "import os, signal, sys\n"
        "def show(*_):\n"
        "    os.write(1, ('size %d %d\\n' % os.get_terminal_size(0)[::-1]).encode())\n"
        "signal.signal(signal.SIGWINCH, show)\n"
        "show()\n"
        "print('read', sys.stdin.readline().strip(), 'tty', os.isatty(0), flush=True)\n"
    )
    session = await driver.open_exec(
        box, ExecSpec(command=("python", "-c", program), tty=True, cols=100, rows=30)
    )
    seen = b""
    outputs = session.output()

    async def read_until(expected: bytes) -> None:
        nonlocal seen
        while expected not in seen:
            try:
                seen += (await asyncio.wait_for(anext(outputs), 10)).data
            except TimeoutError:
                raise AssertionError(f"no {expected!r} within 10 s; saw {seen!r}") from None

    await read_until(b"size 30 100")
    await session.resize(120, 40)
    await read_until(b"size 40 120")
    await session.write_stdin(b"typed")
    await session.close_stdin()  # mid-line: the EOF character ends the line, then the input
    await read_until(b"tty True")
    assert b"read typed tty True" in seen
    assert await session.wait() == 0


async def test_the_main_process_log_is_timestamped_split_and_bounded(
    driver: LocalDriver,
) -> None:
    long_line = "x" * (MAX_LINE_BYTES + 10)
    script = (
        f"import sys\nprint('first'); print('oops', file=sys.stderr); print('{long_line}')\n"
        f"sys.stdout.write(('y' * 1000 + '\\n') * {2 * MAX_FILE_BYTES // 1000}); print('last')"
    )
    box = sandbox(["python", "-c", script])
    await driver.create_sandbox(box)
    workdir = driver._root / box.metadata.id

    async def finished() -> bool:
        lines = await driver.read_logs(box, LogQuery())
        return bool(lines) and lines[-1].message == "last"

    deadline = asyncio.get_running_loop().time() + 10
    while not await finished():
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    sizes = [p.stat().st_size for p in workdir.glob("sandbox.log*")]
    assert len(sizes) == 2 and all(size <= MAX_FILE_BYTES for size in sizes)
    lines = await driver.read_logs(box, LogQuery())
    assert all(len(line.message.encode()) <= MAX_LINE_BYTES for line in lines)
    assert [line.timestamp_ms for line in lines] == sorted(line.timestamp_ms for line in lines)


async def test_a_short_log_keeps_every_line_with_its_stream(driver: LocalDriver) -> None:
    box = sandbox(["sh", "-c", "echo one; echo two >&2; printf 'no newline'; sleep 600"])
    await driver.create_sandbox(box)
    deadline = asyncio.get_running_loop().time() + 5
    while len(lines := await driver.read_logs(box, LogQuery())) < 2:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    assert {(line.target, line.level, line.message) for line in lines} == {
        ("stdout", "INFO", "one"),
        ("stderr", "WARN", "two"),
    }
    await driver.stop_sandbox(box.metadata.id)  # the unfinished last line is written at EOF
    lines = await driver.read_logs(box, LogQuery())
    assert ("stdout", "no newline") in {(line.target, line.message) for line in lines}
