"""A gateway SIGKILLed between spawning a sandbox's process and recording its pid.

The pid file used to be written after the spawn returned; a driver killed in between left a
process nobody recorded, and its successor, restoring the sandbox as running, started a
second copy. Here the kill is forced at exactly that point: a driver in a child process has
its spawn step wrapped so that the process SIGKILLs itself as soon as the sandbox's process
exists. A new driver on the same state directory must end with exactly one process for the
sandbox, and must not touch an unrelated process that looks the same from outside.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from shellgate.controller.drivers import LocalDriver

pytestmark = [
    pytest.mark.timeout(20),
    pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc"),
]

# Runs a driver that creates (or stops, then starts) one sandbox and dies by SIGKILL the
# moment the sandbox's process has been spawned, before the driver can record anything else.
CRASHING_DRIVER = """
import asyncio, os, signal, sys
from pathlib import Path
from shellgate.api import openshell_pb2
from shellgate.controller.drivers import LocalDriver
from shellgate.controller.drivers import local

state_dir, sandbox_id, tag, crash_in = sys.argv[1:5]
spawn = local._start_child

def spawn_then_die(*args, **kwargs):
    process = spawn(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
    return process

async def main():
    driver = LocalDriver(state_dir=Path(state_dir), replica_id="r1", stop_grace_s=1.0)
    await driver.start()
    sandbox = openshell_pb2.Sandbox()
    sandbox.metadata.id = sandbox_id
    sandbox.spec.command.extend(
        [sys.executable, "-c", "import signal; signal.pause()", tag]
    )
    if crash_in == "start":
        await driver.create_sandbox(sandbox)
        await driver.stop_sandbox(sandbox_id)
    local._start_child = spawn_then_die
    if crash_in == "start":
        await driver.start_sandbox(sandbox_id)
    else:
        await driver.create_sandbox(sandbox)
    print("not killed", flush=True)

asyncio.run(main())
"""


def running_with(tag: str) -> list[int]:
    """Live (not zombie) processes whose command line contains ``tag``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
            state = Path(f"/proc/{name}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if tag.encode() in cmdline.split(b"\0") and state != "Z":
            found.append(int(name))
    return found


async def settle(tag: str, want: int) -> list[int]:
    """The processes carrying ``tag`` once their count is ``want`` (or after 3 s)."""
    for _ in range(150):
        pids = running_with(tag)
        if len(pids) == want:
            return pids
        await asyncio.sleep(0.02)
    return running_with(tag)


def kill_all(tag: str) -> None:
    for pid in running_with(tag):
        os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("crash_in", ["create", "start"])
async def test_a_driver_killed_right_after_spawning_leaves_one_process(
    tmp_path: Path, crash_in: str
) -> None:
    state_dir = tmp_path / "state"
    sandbox_id, tag = str(uuid.uuid4()), f"sandbox-tag-{uuid.uuid4()}"
    # An unrelated process with the same command line: only the run token tells them apart.
    stranger = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import signal; signal.pause()", tag, start_new_session=True
    )
    try:
        crashed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", CRASHING_DRIVER, str(state_dir), sandbox_id, tag, crash_in],
            capture_output=True,
            timeout=15,
        )
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr.decode()
        left = set(await settle(tag, 2)) - {stranger.pid}
        assert len(left) == 1, "the crashed driver's process should have outlived it"
        (orphan,) = left

        successor = LocalDriver(state_dir=state_dir, replica_id="r1", stop_grace_s=1.0)
        await successor.start()
        try:
            snapshot = await successor.get_sandbox(sandbox_id)
            assert snapshot is not None
            ready = next(c for c in snapshot.conditions if c.type == "Ready")
            assert ready.status == "True"
            restarted = int(snapshot.instance.pod_name.removeprefix("local-"))
            running = set(await settle(tag, 2)) - {stranger.pid}
            assert running == {restarted}, f"orphan {orphan}, restarted {restarted}"
            assert stranger.returncode is None and stranger.pid in running_with(tag)
        finally:
            await successor.close()
        assert set(await settle(tag, 1)) == {stranger.pid}
    finally:
        stranger.kill()
        await stranger.wait()
        kill_all(tag)
