"""The official SDK runs commands in local sandboxes of real `shellgate serve` processes.

On one replica: ``SandboxClient.exec``/``exec_stream``/``exec_python`` (exit codes, both
streams, stdin, workdir and environment, no shell, output streamed as produced, a timeout that
kills, a cancel that kills, a missing program, a stopped sandbox), ``Sandbox.exec``,
``ExecSandboxInteractive`` with a pseudo-terminal, logs after output, a client that
disconnects, and the environment scrub. On three replicas: the same calls through replicas
that do not own the sandbox are forwarded to its owner, and answer UNAVAILABLE naming the
owner once it is down.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.processes import GatewayProcess, gateways, http_get
from tests.support.wait import eventually

SCRIPT = Path(__file__).parents[1] / "support" / "sdk_exec.py"
PLANTED = "SHELLGATE_TEST_PLANTED_SECRET"
T = TypeVar("T")
CANCELLED_EXEC = 'shellgate_grpc_requests_total{code="CANCELLED",method="ExecSandbox"}'

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


async def sdk(
    address: str, scenario: str, *args: str, env: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    """Run one scenario of the SDK script; its steps by name."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        address,
        scenario,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(process.communicate(), 180)
    steps = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert process.returncode == 0, f"{scenario} failed after {steps}:\n{err.decode()}"
    return {step["step"]: step for step in steps}


def sandbox_dir(state: Path) -> Path:
    dirs = [d for d in (state / "sandboxes").iterdir() if not d.name.startswith(".")]
    assert len(dirs) == 1, dirs
    return dirs[0]


def now(function: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """``function`` as the async probe ``eventually`` polls."""

    async def probe() -> T:
        return function()

    return probe


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


async def test_sdk_exec_on_one_replica(store_url: str, tmp_path: Path) -> None:
    state = tmp_path / "state"
    gateway = GatewayProcess(store_url, state, env={PLANTED: "database-password"})
    async with gateways([gateway]):
        steps = await sdk(gateway.address, "single")
        workdir = sandbox_dir(state)
        main_env_text = (workdir / "main.env").read_text()
        # The cancelled call ended on the gateway too (a handler stuck behind a full output
        # queue would never be counted), and the two timed out calls with DEADLINE_EXCEEDED.
        metrics = await eventually(
            lambda: asyncio.to_thread(http_get, f"{gateway.http}/metrics"),
            lambda answer: CANCELLED_EXEC in answer[1],
        )
    assert (
        'shellgate_grpc_requests_total{code="DEADLINE_EXCEEDED",method="ExecSandbox"} 2.0'
        in (metrics[1])
    )

    assert steps["exit-and-streams"] == {
        "step": "exit-and-streams",
        "exit_code": 3,
        "stdout": "out\n",
        "stderr": "err\n",
    }
    assert steps["stdin"]["stdout"] == "fed through stdin"
    assert steps["workdir-env"]["stdout"] == f"{workdir / 'sub'}\nhello\n"
    assert steps["no-shell"]["stdout"] == "$HOME; echo injected `id`\n"

    env = dict(line.split("=", 1) for line in steps["env"]["stdout"].splitlines())
    main_env = dict(line.split("=", 1) for line in main_env_text.splitlines())
    for seen in (env, main_env):  # exec and main process: the gateway's environment stays out
        assert PLANTED not in seen
        assert not any("database-password" in value for value in seen.values())
        assert seen["HOME"] == str(workdir)
    assert set(env) <= {"PATH", "HOME", "LANG", "PWD", "SHELLGATE_SANDBOX_RUN"}, env
    assert env["HOME"] == str(workdir)
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)

    # Streamed as produced: the first line arrives well before the command ends.
    stream = steps["stream"]
    assert [a[0] for a in stream["arrivals"]] == ["first\n", "second\n"]
    assert stream["arrivals"][0][1] < 1.0 <= stream["arrivals"][1][1]
    assert stream["exit_code"] == 0

    assert steps["python"] == {
        "step": "python",
        "exit_code": 0,
        "stdout": "42\n",
        "stderr": "computing\n",
    }
    assert steps["timeout"]["code"] == "DEADLINE_EXCEEDED"
    assert "execution_timeout" in steps["timeout"]["details"]
    assert steps["python-timeout"]["code"] == "DEADLINE_EXCEEDED"
    assert steps["python-timeout"]["seconds"] < 5
    assert steps["python-timeout-killed"]["stdout"].strip() == "gone"
    assert steps["cancel-started"]["data"] == "started\n"[:8]
    assert steps["cancel-killed"]["stdout"].strip() == "gone"
    assert steps["missing-program"]["code"] == "FAILED_PRECONDITION"
    assert steps["empty-command-wire"]["code"] == "INVALID_ARGUMENT"

    messages = [(line["source"], line["level"], line["message"]) for line in steps["logs"]["lines"]]
    assert ("sandbox", "INFO", "main-started") in messages
    assert ("sandbox", "WARN", "main-warning") in messages
    times = [line["ms"] for line in steps["logs"]["lines"]]
    assert times == sorted(times)

    assert steps["exec-stopped"]["code"] == "FAILED_PRECONDITION"
    assert "STOPPED" in steps["exec-stopped"]["details"]


async def test_interactive_pty_disconnect_and_sandbox_context(
    store_url: str, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    gateway = GatewayProcess(store_url, state)
    async with gateways([gateway]):
        await sdk(gateway.address, "create", "tty")
        steps = await sdk(gateway.address, "interactive", "tty")
        output = steps["interactive"]["output"]
        assert "size 24 80" in output
        assert "size 43 132" in output  # the resize reached the command as SIGWINCH
        assert "got hello" in output
        assert steps["interactive"]["exit_code"] == 7

        # A client that goes away mid-call: its command is killed.
        workdir = sandbox_dir(state)
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            gateway.address,
            "python-forever",
            "tty",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        pid_file = workdir / "disconnect.pid"
        await eventually(now(pid_file.exists), lambda exists: exists, timeout=30)
        pid = int(await eventually(now(pid_file.read_text), lambda text: text.isdigit()))
        assert not process_gone(pid)
        client.send_signal(signal.SIGKILL)
        await client.wait()
        await eventually(now(lambda: process_gone(pid)), lambda gone: gone, timeout=10)

        context = await sdk(
            gateway.address, "context", env={"XDG_CONFIG_HOME": str(tmp_path / "config")}
        )
        assert context["context-exec"]["stdout"].startswith("from-context\n")
        assert context["context-python"]["stdout"] == "5\n"
        assert "context-closed" in context


async def test_exec_and_logs_through_replicas_that_do_not_own_the_sandbox(
    store_url: str, tmp_path: Path
) -> None:
    """Each replica has its own state directory, so only the owner's driver knows the
    sandbox: what the others answer can only have come from the owner."""
    replicas = [
        GatewayProcess(store_url, tmp_path / f"state{n}", replica_id=f"r{n}") for n in (1, 2, 3)
    ]
    owner, second, third = replicas
    async with gateways(replicas):
        await sdk(owner.address, "create", "owned")
        workdir = sandbox_dir(owner.state_dir)
        for other in (second, third):
            steps = await sdk(other.address, "remote", "owned")
            assert steps["remote-exec"] == {
                "step": "remote-exec",
                "exit_code": 4,
                "stdout": f"{workdir}\nrelayed stdin",
                "stderr": "err\n",
            }
            assert steps["remote-python"]["stdout"] == "3\n"
            assert steps["remote-timeout"]["code"] == "DEADLINE_EXCEEDED"
            assert "owner-main" in [line["message"] for line in steps["logs"]["lines"]]
        interactive = await sdk(third.address, "interactive", "owned")
        assert "size 43 132" in interactive["interactive"]["output"]
        assert interactive["interactive"]["exit_code"] == 7

        await owner.stop()
        down = await sdk(second.address, "remote-down", "owned")
    for step in ("owner-down", "owner-down-logs"):
        assert down[step]["code"] == "UNAVAILABLE", down[step]
        assert "replica 'r1'" in down[step]["details"], down[step]
