"""The startup half of ``bench.scale``: how long a replica takes to serve, and its first pass.

For each size, the table is grown to that many sandboxes (``scale_store.fill``), then a real
``shellgate serve`` process is started on it (local driver with an empty state directory, so
no sandbox has a process: the first resync pass finds nothing to repair, which is the case
an incremental pass must make cheap). This process polls the gRPC Health service and then
GetSandbox until each answers, and reads the child's CPU from /proc until it stays idle:

- ``health_s`` / ``get_s``: from the spawn to the first answered Health check / GetSandbox;
- ``ready_cpu_s``: the child's CPU until GetSandbox answered (imports and startup included);
- ``pass_s`` / ``pass_cpu_s``: from the spawn until the child went idle, and the CPU it used
  meanwhile: the first resync pass (and the startup before it). Idle is IDLE_WINDOW_S with
  less than IDLE_SHARE of a core used; that window is not counted.
- ``during_p50_ms`` / ``during_p99_ms``: the latency of the GetSandbox calls this process
  makes every PROBE_EVERY_S from the first answer until the child went idle: how well the
  replica serves while its first pass runs (``during_gets`` of them; 0 when the pass was
  over before the first answer).

The periodic resync is pushed out of the run (a large ``--sweep-interval``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.report import markdown_table
from bench.scale_store import sandbox_number
from bench.scale_watch import cpu_seconds
from bench.stats import Latency
from shellgate.api import datamodel_pb2, openshell_pb2, openshell_pb2_grpc
from shellgate.store import Store, StoreUnavailable, connect
from shellgate.store.secrets import Keyring

POLL_S = 0.01
CPU_POLL_S = 0.25
IDLE_WINDOW_S = 1.5
IDLE_SHARE = 0.05
GIVE_UP_S = 900.0
FILLERS = 4
PROBE_EVERY_S = 0.05
SWEEP_INTERVAL_S = "100000"
RETRY_NOW = [
    ("grpc.initial_reconnect_backoff_ms", 10),
    ("grpc.min_reconnect_backoff_ms", 10),
    ("grpc.max_reconnect_backoff_ms", 20),
]
"""A client that tries to connect again within 10-20 ms (gRPC's default waits 1 s and more
after a refused connection, which would hide when the server started listening)."""


@dataclass
class StartupScale:
    backend: str
    rows: int
    health_s: float
    get_s: float
    ready_cpu_s: float
    pass_s: float
    pass_cpu_s: float
    during_gets: int = 0
    during_p50_ms: float = 0.0
    during_p99_ms: float = 0.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _until_answered(
    call: object, request: object, process: asyncio.subprocess.Process
) -> None:
    """Call until the server answers (any answer but UNAVAILABLE: it is not serving yet)."""
    deadline = time.monotonic() + GIVE_UP_S
    while True:
        if process.returncode is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}")
        try:
            await call(request, timeout=5.0)  # type: ignore[operator]
            return
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    return  # answered (NOT_FOUND, say): it is serving
                raise
        await asyncio.sleep(POLL_S)


async def _probe(call: Any, request: object, into: list[tuple[float, float]]) -> None:
    """GetSandbox every PROBE_EVERY_S; each call's start and latency go ``into``."""
    while True:
        sent = time.perf_counter()
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call(request, timeout=30.0)
        into.append((sent, time.perf_counter() - sent))
        await asyncio.sleep(PROBE_EVERY_S)


async def _until_idle(pid: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds from the spawn until the process went idle."""
    samples: list[tuple[float, float]] = [(time.perf_counter(), cpu_seconds(pid))]
    window = int(IDLE_WINDOW_S / CPU_POLL_S)
    deadline = time.monotonic() + GIVE_UP_S
    while time.monotonic() < deadline:
        await asyncio.sleep(CPU_POLL_S)
        samples.append((time.perf_counter(), cpu_seconds(pid)))
        if len(samples) > window:
            (t0, c0), (t1, c1) = samples[-window - 1], samples[-1]
            if c1 - c0 < IDLE_SHARE * (t1 - t0):
                return t0, c0
    raise TimeoutError("the gateway did not go idle")


async def start_and_measure(url: str, backend: str, rows: int, name: str) -> StartupScale:
    """Spawn ``shellgate serve`` on ``url`` and measure it (see the module docstring)."""
    port, http_port = _free_port(), _free_port()
    with tempfile.TemporaryDirectory(prefix="shellgate-bench-startup-") as directory:
        key = Path(directory) / "key"
        Keyring.create_file(key)
        command = [
            sys.executable, "-m", "shellgate.controller.app.cli", "serve",
            "--database-url", url,
            "--listen", f"127.0.0.1:{port}",
            "--http-listen", f"127.0.0.1:{http_port}",
            "--driver", "local",
            "--state-dir", str(Path(directory) / "state"),
            "--replica-id", "bench-startup",
            "--sweep-interval", SWEEP_INTERVAL_S,
            "--encryption-key-file", str(key),
        ]  # fmt: skip
        began = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}", RETRY_NOW) as channel:
                health = health_pb2_grpc.HealthStub(channel)
                await _until_answered(health.Check, health_pb2.HealthCheckRequest(), process)
                health_s = time.perf_counter() - began
                stub = openshell_pb2_grpc.OpenShellStub(channel)
                request = openshell_pb2.GetSandboxRequest(
                    name=name, workspace_scope=datamodel_pb2.WorkspaceSelector(workspace="w0")
                )
                await _until_answered(stub.GetSandbox, request, process)
                get_s = time.perf_counter() - began
                ready_cpu = cpu_seconds(process.pid)
                probes: list[tuple[float, float]] = []
                probing = asyncio.create_task(_probe(stub.GetSandbox, request, probes))
                try:
                    idle_at, pass_cpu = await _until_idle(process.pid)
                finally:
                    probing.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await probing
            during = [took for sent, took in probes if sent < idle_at]
        finally:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
            await process.wait()
    latency = Latency.of(during) if during else Latency(0.0, 0.0)
    return StartupScale(
        backend, rows, health_s, get_s, ready_cpu, idle_at - began, pass_cpu,
        len(during), latency.p50_ms, latency.p99_ms,
    )  # fmt: skip


async def fill(store: Store, start: int, stop: int) -> list[str]:
    """Create rows ``start``..``stop`` (``scale_store``'s sandboxes) with a few creators, each
    retrying a create the busy database refused: the table's content is what matters here."""
    ids: list[str] = []
    numbers = iter(range(start, stop))

    async def creator() -> None:
        for i in numbers:
            while True:
                try:
                    created = await store.create_message(sandbox_number(i), status="ready")
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.1)
            ids.append(created.metadata.id)

    await asyncio.gather(*(creator() for _ in range(FILLERS)))
    return ids


async def run_startup(url: str, sizes: Sequence[int]) -> list[StartupScale]:
    """Grow the table to each size and measure a replica's startup on it. A database that
    already holds sandboxes (a configured one, shared with other parts) is grown from what it
    holds, and a size it already exceeds is measured at its real count."""
    results = []
    for size in sizes:
        store = await connect(url)
        try:
            count = sum((await store.count_by_status("sandbox")).values())
            ids = await fill(store, count, size) if size > count else []
            name = await _a_name(store, ids)
            backend = store.backend
            if backend == "postgres":  # as autovacuum would after such growth
                await store._execute("ANALYZE objects")  # type: ignore[attr-defined]
        finally:
            await store.close()
        results.append(await start_and_measure(url, backend, max(size, count), name))
    return results


async def _a_name(store: Store, ids: Sequence[str]) -> str:
    """The name of a sandbox in workspace w0 (the GetSandbox the measurement makes)."""
    for sandbox_id in ids:
        record = await store.get("sandbox", sandbox_id)
        if record is not None and record.workspace == "w0" and record.name:
            return record.name
    return "absent"


def startup_lines(rows: Sequence[StartupScale]) -> list[str]:
    """The document's part for these results: a paragraph and a table (none without rows)."""
    if not rows:
        return []
    table = markdown_table(
        ["backend", "sandboxes", "Health answered", "GetSandbox answered", "CPU until then",
         "idle after", "CPU until idle", "GetSandbox meanwhile p50 / p99"],
        [
            [r.backend, f"{r.rows:,}", f"{r.health_s:.2f} s", f"{r.get_s:.2f} s",
             f"{r.ready_cpu_s:.2f} s", f"{r.pass_s:.2f} s", f"{r.pass_cpu_s:.2f} s",
             f"{r.during_p50_ms:.1f} / {r.during_p99_ms:.1f} ms ({r.during_gets})"]
            for r in rows
        ],
    )  # fmt: skip
    return [
        "",
        "Startup: a `shellgate serve` process (local driver, no sandbox running) on a table of "
        "that many sandboxes; times from the spawn to the first answered Health check and "
        "GetSandbox, and until the process went idle (its first resync pass done), with its "
        "CPU (imports included) until each; and the latency of a GetSandbox made every "
        f"{PROBE_EVERY_S * 1000:.0f} ms meanwhile (how many in brackets).",
        "",
        table,
    ]


def main() -> None:  # pragma: no cover - a manual entry point for one backend URL
    url, sizes = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
    for found in asyncio.run(run_startup(url, sizes)):
        print(found, flush=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
