"""The local driver half of ``bench.scale``: what an idle sandbox costs.

Creates N sandboxes without a command (each runs the driver's idle command) and reads from
/proc what they cost: creates per second, the gateway process's CPU per create, the resident
memory of each idle child, and the threads the gateway process holds while they run.
"""

from __future__ import annotations

import asyncio
import os
import resource
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from shellgate.api import openshell_pb2
from shellgate.controller.drivers import LocalDriver
from shellgate.controller.drivers.local import DEFAULT_IDLE_COMMAND

PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class LocalScale:
    sandboxes: int
    creates_per_s: float
    cpu_ms_per_create: float
    child_cpu_ms: float
    child_rss_mb: float
    threads: int
    idle_command: str


def _rss_kb(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB
    except (OSError, IndexError, ValueError):
        return 0


def _child_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_local(count: int) -> LocalScale:
    with tempfile.TemporaryDirectory(prefix="shellgate-bench-local-") as directory:
        driver = LocalDriver(state_dir=Path(directory), replica_id="bench", stop_grace_s=2.0)
        await driver.start()
        try:
            cpu_from, began = _cpu_s(), time.perf_counter()
            ids = []
            for _ in range(count):
                sandbox = openshell_pb2.Sandbox()
                sandbox.metadata.id = uuid.uuid4().hex
                await driver.create_sandbox(sandbox)
                ids.append(sandbox.metadata.id)
            elapsed, cpu = time.perf_counter() - began, _cpu_s() - cpu_from
            await asyncio.sleep(0.5)  # let the children finish starting before measuring
            pids = [_pid_of(Path(directory), sandbox_id) for sandbox_id in ids]
            per_child = max(1, len(pids))
            rss = sum(_rss_kb(pid) for pid in pids) / per_child / 1024
            child_cpu = sum(_child_cpu_s(pid) for pid in pids) * 1000 / per_child
            command = " ".join([Path(DEFAULT_IDLE_COMMAND[0]).name, *DEFAULT_IDLE_COMMAND[1:]])
            return LocalScale(
                count,
                count / elapsed,
                cpu * 1000 / count,
                child_cpu,
                rss,
                threading.active_count(),
                command,
            )
        finally:
            await driver.close()


def _pid_of(state_dir: Path, sandbox_id: str) -> int:
    return int((state_dir / "sandboxes" / sandbox_id / "pid").read_text().split()[0])
