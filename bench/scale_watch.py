"""The watch half of ``bench.scale``: WatchSandbox fan-out on one gateway replica.

A gateway process (bench/scale_server.py) serves S streams, each on its own sandbox, opened
by this process over a few channels. This process then writes at a steady rate to sandboxes
chosen at random among the watched ones. Delivery latency is from just before the write call
to the moment the stream hands this process the new version; the gateway's CPU is read from
/proc before and after.

How the writes reach the gateway depends on the backend, as it does in production:

* Postgres: through this process's own store, so every write reaches the gateway through the
  change feed exactly as a write made by another replica does. With 100 streams the delivery
  latency is also the cross-replica propagation time.
* SQLite: one gateway process owns the file (a write by another process would reach it only
  as a wildcard hint of its poll, which cannot say which row changed). So this process, as a
  client, calls an RPC that writes the watched sandbox (AttachSandboxProvider, then
  DetachSandboxProvider, in turn), and the gateway's in-process change feed delivers it. The
  gateway's CPU per write then includes the RPC itself, so SQLite also gets a row at 0
  streams: the same writes with nothing watching, the cost the fan-out adds to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.objects import Sandbox, bench_sandbox, increment
from bench.scale_store import CREATORS
from bench.stats import Latency
from shellgate.api import datamodel_pb2, openshell_pb2, openshell_pb2_grpc
from shellgate.store import Store

STREAMS_PER_CHANNEL = 250
IDLE_SECONDS = 3.0
OPEN_WITHIN_S = 120.0
OPENING_AT_ONCE = 200
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class WatchScale:
    streams: int
    writes: int
    delivered: int
    delivery: Latency
    cpu_ms_per_write: float
    idle_cpu_percent: float
    open_seconds: float
    opened: int
    """Streams that had sent their first message within OPEN_WITHIN_S (the rest count as
    not delivered)."""
    backend: str = "postgres"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


@contextlib.asynccontextmanager
async def gateway_process(url: str) -> AsyncIterator[tuple[int, str]]:
    """A bench.scale_server process on ``url``: its pid and gRPC address."""
    with tempfile.TemporaryDirectory() as directory:
        port_file = Path(directory) / "port"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.scale_server", url, str(port_file)
        )
        try:
            for _ in range(300):
                if _announced(port_file):
                    break
                if process.returncode is not None:
                    raise RuntimeError("the gateway process exited")
                await asyncio.sleep(0.1)
            yield process.pid, f"127.0.0.1:{_announced(port_file)}"
        finally:
            process.kill()
            await process.wait()


def _announced(port_file: Path) -> str:
    """The port the gateway process wrote, or "" before it serves."""
    return port_file.read_text() if port_file.exists() else ""


class Streams:
    """S open WatchSandbox streams and the time each version arrived."""

    def __init__(self, address: str, names: list[str]) -> None:
        self.channels = [
            grpc.aio.insecure_channel(address) for _ in range(0, len(names), STREAMS_PER_CHANNEL)
        ]
        self.names = names
        self.arrived: dict[tuple[str, int], float] = {}
        self.opened = 0
        self.all_open = asyncio.Event()
        # Thousands of calls started in the same instant end partly CANCELLED (1,944 of
        # 5,000 here, with either server version); clients open their watches over time.
        self._opening = asyncio.Semaphore(OPENING_AT_ONCE)
        self.tasks: list[asyncio.Task[None]] = []
        if not names:
            self.all_open.set()

    async def open(self, within_s: float) -> float:
        began = time.perf_counter()
        for n, name in enumerate(self.names):
            stub = openshell_pb2_grpc.OpenShellStub(self.channels[n // STREAMS_PER_CHANNEL])
            self.tasks.append(asyncio.create_task(self._follow(stub, name)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.all_open.wait(), within_s)
        return time.perf_counter() - began

    async def _follow(self, stub: openshell_pb2_grpc.OpenShellStub, name: str) -> None:
        request = openshell_pb2.WatchSandboxRequest(sandbox=name, follow_status=True)
        first = True
        await self._opening.acquire()
        try:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
                async for message in stub.WatchSandbox(request):
                    now = time.perf_counter()
                    meta = message.sandbox.metadata
                    self.arrived[(meta.id, meta.resource_version)] = now
                    if first:
                        first = False
                        self._opening.release()
                        self.opened += 1
                        if self.opened == len(self.names):
                            self.all_open.set()
        finally:
            if first:
                self._opening.release()

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for channel in self.channels:
            await channel.close()


Write = Callable[[str], Awaitable[tuple[float, int]]]
"""Writes the sandbox of this id: when the write began and the version it wrote."""


async def run_fanout(
    write: Write,
    pid: int,
    address: str,
    watched: list[tuple[str, str]],
    writable: list[str],
    rate: float,
    seconds: float,
    backend: str = "postgres",
) -> WatchScale:
    """``watched``: (id, name) of each sandbox to stream; ``writable``: the ids to write, at
    ``rate`` for ``seconds`` (the watched ones, or others when nothing is watched)."""
    streams = Streams(address, [name for _id, name in watched])
    try:
        open_s = await streams.open(within_s=OPEN_WITHIN_S)
        await asyncio.sleep(1.0)  # let the last first-reads finish
        idle_from = cpu_seconds(pid)
        await asyncio.sleep(IDLE_SECONDS)
        idle = (cpu_seconds(pid) - idle_from) / IDLE_SECONDS
        issued = await write_steadily(write, writable, rate, seconds, pid)
        await asyncio.sleep(1.0)  # stragglers
        cpu_busy, issued_at = issued
        latencies = [
            streams.arrived[key] - at for key, at in issued_at.items() if key in streams.arrived
        ]
        return WatchScale(
            len(watched),
            len(issued_at),
            len(latencies),
            Latency.of(latencies),
            cpu_busy * 1000 / max(1, len(issued_at)),
            idle * 100,
            open_s,
            streams.opened,
            backend,
        )
    finally:
        await streams.close()


async def write_steadily(
    write: Write, ids: list[str], rate: float, seconds: float, pid: int
) -> tuple[float, dict[tuple[str, int], float]]:
    """Writes at ``rate``/s to random ids; the gateway's CPU seconds and each write's start."""
    rng = random.Random(11)
    issued: dict[tuple[str, int], float] = {}
    pending: set[asyncio.Task[None]] = set()

    async def write_one(sandbox_id: str) -> None:
        began, version = await write(sandbox_id)
        issued[(sandbox_id, version)] = began

    cpu_from = cpu_seconds(pid)
    start = time.perf_counter()
    for n in range(int(rate * seconds)):
        delay = start + n / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(write_one(rng.choice(ids)))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    return cpu_seconds(pid) - cpu_from, issued


async def watched_sandboxes(store: Store, count: int) -> list[tuple[str, str]]:
    """``count`` fresh sandboxes in the default workspace to watch: (id, name)."""
    found: list[tuple[str, str]] = []
    numbers = iter(range(count))

    async def creator() -> None:
        for _ in numbers:
            created = await store.create_message(bench_sandbox(), status="ready")
            found.append((created.metadata.id, created.metadata.name))

    await asyncio.gather(*(creator() for _ in range(CREATORS)))
    return found


def store_writer(store: Store) -> Write:
    """Postgres: a CAS through this process's own store, as another replica writes."""

    async def write(sandbox_id: str) -> tuple[float, int]:
        began = time.perf_counter()
        outcome = await store.update_message_cas(Sandbox, sandbox_id, increment)
        return began, outcome.message.metadata.resource_version

    return write


class RpcWriter:
    """SQLite: writes through the gateway's own API. Each sandbox gets a provider attached,
    then detached, in turn (both change its row); PROVIDERS providers spread the attaches'
    provider fences. A sandbox's writes are one at a time, so each toggle writes."""

    PROVIDERS = 16

    def __init__(self, address: str, watched: list[tuple[str, str]]) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stub = openshell_pb2_grpc.OpenShellStub(self.channel)
        self.names = dict(watched)
        self.providers = {i: f"fanout-{n % self.PROVIDERS}" for n, (i, _) in enumerate(watched)}
        self.attached: set[str] = set()
        self.locks: dict[str, asyncio.Lock] = {}

    async def create_providers(self) -> None:
        for n in range(self.PROVIDERS):
            provider = datamodel_pb2.Provider(type="github", credentials={"TOKEN": "x"})
            provider.metadata.name = f"fanout-{n}"
            await self.stub.CreateProvider(openshell_pb2.CreateProviderRequest(provider=provider))

    async def __call__(self, sandbox_id: str) -> tuple[float, int]:
        async with self.locks.setdefault(sandbox_id, asyncio.Lock()):
            name, provider = self.names[sandbox_id], self.providers[sandbox_id]
            began = time.perf_counter()
            if sandbox_id in self.attached:
                detach = openshell_pb2.DetachSandboxProviderRequest(sandbox=name, provider=provider)
                sandbox = (await self.stub.DetachSandboxProvider(detach)).sandbox
                self.attached.discard(sandbox_id)
            else:
                attach = openshell_pb2.AttachSandboxProviderRequest(sandbox=name, provider=provider)
                sandbox = (await self.stub.AttachSandboxProvider(attach)).sandbox
                self.attached.add(sandbox_id)
            return began, sandbox.metadata.resource_version

    async def close(self) -> None:
        await self.channel.close()
