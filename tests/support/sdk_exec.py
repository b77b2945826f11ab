"""Runs in a subprocess: the official SDK runs commands in a sandbox of a gateway.

``python sdk_exec.py ADDRESS SCENARIO [ARG]``; prints one JSON object per step
(``{"step": ..., ...}``) so the test can tell how far it got and assert on what the SDK saw.
The SDK's generated modules clash with ``shellgate.api`` in one process, hence the subprocess.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import grpc
from openshell import Sandbox, SandboxClient
from openshell._proto import openshell_pb2
from openshell.sandbox import ExecChunk, ExecResult

WS = "default"


def report(step: str, **fields: Any) -> None:
    print(json.dumps({"step": step, **fields}), flush=True)


def failure(error: grpc.RpcError) -> dict[str, Any]:
    return {"code": error.code().name, "details": error.details()}


def result(res: ExecResult) -> dict[str, Any]:
    return {"exit_code": res.exit_code, "stdout": res.stdout, "stderr": res.stderr}


def sleepy_function(pid_file: str, seconds: float) -> str:
    import os
    import pathlib
    import time

    pathlib.Path(pid_file).write_text(str(os.getpid()))
    time.sleep(seconds)
    return "woke up"


def add(a: int, b: int) -> int:
    import sys

    print("computing", file=sys.stderr)
    return a + b


def basics(client: SandboxClient, name: str) -> None:
    """exec, exec_stream and exec_python on a READY sandbox."""
    res = client.exec(name, ["sh", "-c", "echo out; echo err >&2; exit 3"], workspace=WS)
    report("exit-and-streams", **result(res))
    res = client.exec(name, ["cat"], workspace=WS, stdin=b"fed through stdin")
    report("stdin", **result(res))
    client.exec(name, ["mkdir", "-p", "sub"], workspace=WS)
    res = client.exec(
        name,
        ["sh", "-c", 'pwd; echo "$GREETING"'],
        workspace=WS,
        workdir="sub",
        env={"GREETING": "hello"},
    )
    report("workdir-env", **result(res))
    res = client.exec(name, ["echo", "$HOME; echo injected", "`id`"], workspace=WS)
    report("no-shell", **result(res))
    res = client.exec(name, ["env"], workspace=WS, no_login_shell=True)
    report("env", **result(res))
    started = time.monotonic()
    arrivals = []
    final: ExecResult | None = None
    command = ["sh", "-c", "echo first; sleep 1.5; echo second"]
    for item in client.exec_stream(name, command, workspace=WS):
        if isinstance(item, ExecChunk):
            arrivals.append([item.data.decode(), round(time.monotonic() - started, 3)])
        else:
            final = item
    assert final is not None
    report("stream", arrivals=arrivals, **result(final))
    res = client.exec_python(name, add, workspace=WS, args=(20, 22))
    report("python", **result(res))
    try:
        client.exec(name, ["sleep", "30"], workspace=WS, timeout_seconds=1)
        report("timeout", code="OK")
    except grpc.RpcError as error:
        report("timeout", **failure(error))
    pid_file = "python-timeout.pid"
    started = time.monotonic()
    try:
        client.exec_python(
            name, sleepy_function, workspace=WS, args=(pid_file, 30), timeout_seconds=1
        )
        report("python-timeout", code="OK")
    except grpc.RpcError as error:
        report("python-timeout", seconds=round(time.monotonic() - started, 2), **failure(error))
    res = client.exec(
        name, ["sh", "-c", f'kill -0 "$(cat {pid_file})" && echo alive || echo gone'], workspace=WS
    )
    report("python-timeout-killed", **result(res))
    cancel(client, name)
    try:
        client.exec(name, ["no-such-program-here"], workspace=WS)
        report("missing-program", code="OK")
    except grpc.RpcError as error:
        report("missing-program", **failure(error))
    try:
        client.exec(name, [], workspace=WS)
    except Exception as error:  # the SDK refuses an empty command itself
        report("empty-command", error=type(error).__name__)
    request = openshell_pb2.ExecSandboxRequest(sandbox=name, command=[])
    try:
        list(client._stub.ExecSandbox(request, timeout=10))
        report("empty-command-wire", code="OK")
    except grpc.RpcError as error:
        report("empty-command-wire", **failure(error))


def cancel(client: SandboxClient, name: str) -> None:
    """A cancelled call kills its command: the SDK's own stub, cancelled mid-stream."""
    request = openshell_pb2.ExecSandboxRequest(
        sandbox=name, command=["sh", "-c", "echo $$ > cancel.pid; exec yes started"]
    )
    call = client._stub.ExecSandbox(request, timeout=30)
    first = next(call)
    time.sleep(1)  # the command floods the stream meanwhile: the gateway's queue is full
    call.cancel()
    report("cancel-started", data=first.stdout.data.decode()[:8])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        res = client.exec(
            name,
            ["sh", "-c", 'kill -0 "$(cat cancel.pid)" && echo alive || echo gone'],
            workspace=WS,
        )
        if res.stdout.strip() == "gone":
            break
        time.sleep(0.1)
    report("cancel-killed", **result(res))


def logs(client: SandboxClient, name: str) -> None:
    request = openshell_pb2.GetSandboxLogsRequest(sandbox=name)
    reply = client._stub.GetSandboxLogs(request, timeout=10)
    lines = [
        {
            "source": line.source,
            "level": line.level,
            "message": line.message,
            "ms": line.event_time.ToMilliseconds(),
        }
        for line in reply.logs
    ]
    report("logs", lines=lines, total=reply.buffer_total)


def scenario_single(address: str) -> None:
    with SandboxClient(address, timeout=30) as client:
        spec = openshell_pb2.SandboxSpec(
            command=[
                "sh",
                "-c",
                "env > main.env; echo main-started; echo main-warning >&2; exec sleep 600",
            ]
        )
        client.create(workspace=WS, name="ex", spec=spec)
        client.wait_ready("ex", workspace=WS, timeout_seconds=60)
        report("ready")
        basics(client, "ex")
        logs(client, "ex")
        stopped = client.stop("ex", workspace=WS)
        client.wait_stopped("ex", workspace=WS, timeout_seconds=60)
        try:
            client.exec("ex", ["true"], workspace=WS)
            report("exec-stopped", code="OK")
        except grpc.RpcError as error:
            report("exec-stopped", phase=stopped.status.phase, **failure(error))


def scenario_create(address: str, name: str) -> None:
    """Create a sandbox through this replica (which becomes its owner) and wait for READY."""
    with SandboxClient(address, timeout=30) as client:
        client.create(
            workspace=WS,
            name=name,
            spec=openshell_pb2.SandboxSpec(command=["sh", "-c", "echo owner-main; exec sleep 600"]),
        )
        client.wait_ready(name, workspace=WS, timeout_seconds=60)
        report("ready")


def scenario_remote(address: str, name: str) -> None:
    """exec, exec_python and logs through a replica that does not own the sandbox."""
    with SandboxClient(address, timeout=30) as client:
        res = client.exec(
            name,
            ["sh", "-c", "pwd; cat; echo err >&2; exit 4"],
            workspace=WS,
            stdin=b"relayed stdin",
        )
        report("remote-exec", **result(res))
        res = client.exec_python(name, add, workspace=WS, args=(1, 2))
        report("remote-python", **result(res))
        try:
            client.exec(name, ["sleep", "30"], workspace=WS, timeout_seconds=1)
            report("remote-timeout", code="OK")
        except grpc.RpcError as error:
            report("remote-timeout", **failure(error))
        logs(client, name)


def scenario_remote_down(address: str, name: str) -> None:
    with SandboxClient(address, timeout=30) as client:
        try:
            client.exec(name, ["true"], workspace=WS)
            report("owner-down", code="OK")
        except grpc.RpcError as error:
            report("owner-down", **failure(error))
        try:
            client._stub.GetSandboxLogs(
                openshell_pb2.GetSandboxLogsRequest(sandbox=name), timeout=10
            )
            report("owner-down-logs", code="OK")
        except grpc.RpcError as error:
            report("owner-down-logs", **failure(error))


def scenario_python_forever(address: str, name: str) -> None:
    """Runs until killed: the test kills this client mid-call (a disconnect)."""
    with SandboxClient(address, timeout=120) as client:
        report("calling")
        client.exec_python(name, sleepy_function, workspace=WS, args=("disconnect.pid", 100))


def scenario_sandbox_context(address: str) -> None:
    """The SDK's ``Sandbox`` context manager, pointed at the gateway through its config."""
    host, port = address.rsplit(":", 1)
    config = os.environ["XDG_CONFIG_HOME"]
    gateway_dir = os.path.join(config, "openshell", "gateways", "shellgate-test")
    os.makedirs(gateway_dir, exist_ok=True)
    with open(os.path.join(gateway_dir, "metadata.json"), "w") as out:
        json.dump({"gateway_endpoint": f"http://{host}:{port}"}, out)
    os.environ["OPENSHELL_GATEWAY"] = "shellgate-test"
    with Sandbox(workspace=WS, name="ctx", ready_timeout_seconds=60) as sandbox:
        res = sandbox.exec(["sh", "-c", "echo from-context; pwd"])
        report("context-exec", **result(res))
        res = sandbox.exec_python(add, args=(2, 3))
        report("context-python", **result(res))
    report("context-closed")


WINDOW_PROGRAM = (  # os.write in the handler: a print could be interrupted by it (reentrant)
    "import os, signal, sys\n"
    "def show(*_):\n"
    "    cols, rows = os.get_terminal_size(0)\n"
    "    os.write(1, f'size {rows} {cols}\\n'.encode())\n"
    "signal.signal(signal.SIGWINCH, show)\n"
    "show()\n"
    "for line in sys.stdin:\n"
    "    if line.strip() == 'quit':\n"
    "        sys.exit(7)\n"
    "    os.write(1, f'got {line.strip()}\\n'.encode())\n"
)


def scenario_interactive(address: str, name: str) -> None:
    """ExecSandboxInteractive with a pseudo-terminal, through the SDK's generated stub: the
    command sees its window size, then a resize (SIGWINCH), then input, and its exit."""
    import queue

    inputs: queue.Queue[openshell_pb2.ExecSandboxInput | None] = queue.Queue()
    start = openshell_pb2.ExecSandboxRequest(
        sandbox=name, command=["python", "-c", WINDOW_PROGRAM], tty=True, cols=80, rows=24
    )
    inputs.put(openshell_pb2.ExecSandboxInput(start=start))

    def requests():  # type: ignore[no-untyped-def]
        while (message := inputs.get()) is not None:
            yield message

    with SandboxClient(address, timeout=30) as client:
        output = ""
        sent_resize = sent_input = False
        exit_code = None
        for event in client._stub.ExecSandboxInteractive(requests(), timeout=30):
            kind = event.WhichOneof("payload")
            if kind == "exit":
                exit_code = event.exit.exit_code
                continue
            output += (event.stdout.data if kind == "stdout" else event.stderr.data).decode()
            if "size 24 80" in output and not sent_resize:
                sent_resize = True
                resize = openshell_pb2.ExecSandboxWindowResize(cols=132, rows=43)
                inputs.put(openshell_pb2.ExecSandboxInput(resize=resize))
            if "size 43 132" in output and not sent_input:
                sent_input = True
                inputs.put(openshell_pb2.ExecSandboxInput(stdin=b"hello\n"))
                inputs.put(openshell_pb2.ExecSandboxInput(stdin=b"quit\n"))
        inputs.put(None)
        report("interactive", output=output, exit_code=exit_code)


SCENARIOS: dict[str, Callable[..., None]] = {
    "interactive": scenario_interactive,
    "single": scenario_single,
    "create": scenario_create,
    "remote": scenario_remote,
    "remote-down": scenario_remote_down,
    "python-forever": scenario_python_forever,
    "context": scenario_sandbox_context,
}


if __name__ == "__main__":
    SCENARIOS[sys.argv[2]](sys.argv[1], *sys.argv[3:])
