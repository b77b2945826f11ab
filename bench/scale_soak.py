"""The soak half of ``bench.scale``: the gateway's memory over a long mixed load.

A real ``shellgate serve`` process (local driver, its own fresh database, default flags) is
driven over gRPC by this process at a steady rate, for ``--soak-minutes``, with a mix of what
clients do: creates and deletes (keeping the population near its starting size), gets, lists
with and without a label selector, writes that go through compare-and-swap (a sandbox setting,
a provider update, a provider attached to and detached from a sandbox), WatchSandbox streams
opened, read and closed, and a command run in a sandbox. Every few seconds this process reads
the gateway's resident memory, open file descriptors and threads from /proc.

A leak shows as a slope, not as a size: the MB per minute of a least-squares line through
the samples of the second half (the first half includes the warm-up of caches, connection
pools and the allocator's arenas). Open-loop on purpose: a closed loop would slow down as the
gateway does and hide a cost that grows.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import signal
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.scale_watch import cpu_seconds
from shellgate.api import datamodel_pb2, openshell_pb2, openshell_pb2_grpc, sandbox_pb2
from shellgate.store.secrets import Keyring

POPULATION = 20
"""Sandboxes alive at the start; creates and deletes keep it between half and twice that."""
MAX_IN_FLIGHT = 64
"""Calls outstanding at once; an operation due while that many are open is counted as skipped
(the gateway fell behind) instead of piling up in this process."""
CALL_TIMEOUT_S = 30.0
READY_AFTER_S = 3.0
"""A sandbox is used for exec only this long after its create (its child has started)."""
PROVIDER = "soak-gh"
MIX: dict[str, int] = {
    "get": 20,
    "list": 8,
    "list_selector": 8,
    "setting": 10,
    "provider_update": 5,
    "attach_detach": 10,
    "watch": 10,
    "exec": 5,
    "create": 12,
    "delete": 12,
}
"""Relative weight of each operation."""
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class SoakScale:
    backend: str
    minutes: float
    rate: float
    ops: int
    errors: int
    skipped: int
    rss_start_mb: float
    rss_end_mb: float
    rss_max_mb: float
    slope_mb_per_min: float
    """Least squares over the second half of the samples."""
    fds_start: int
    fds_end: int
    threads_start: int
    threads_end: int
    cpu_percent: float
    """The gateway's CPU over the load, in % of one core."""
    error_kinds: dict[str, int] = field(default_factory=dict)
    """``"<op> <status code>"``: how many."""
    samples: list[list[float]] = field(default_factory=list)
    """[seconds since the load began, RSS MB, open fds, threads]"""


# --- reading the gateway from /proc -----------------------------------------------------------


def process_sample(pid: int) -> tuple[float, int, int]:
    """RSS in MB, open file descriptors and threads of ``pid``."""
    rss_mb = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KB / 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    threads = len(os.listdir(f"/proc/{pid}/task"))
    return rss_mb, fds, threads


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float:
    """The least-squares slope of (seconds, value) points, per minute; 0 with fewer than 2."""
    if len(points) < 2:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_v = sum(v for _, v in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / spread * 60.0


def second_half(samples: Sequence[Sequence[float]], seconds: float) -> list[tuple[float, float]]:
    return [(s[0], s[1]) for s in samples if s[0] >= seconds / 2]


# --- the gateway process ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2.0) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@contextlib.asynccontextmanager
async def serve_process(url: str, directory: Path) -> AsyncIterator[tuple[int, str]]:
    """``shellgate serve`` on ``url`` with the local driver: its pid and gRPC address. Stopped
    with SIGTERM, so the local driver ends its sandboxes' children itself."""
    key_file = directory / "encryption.key"
    Keyring.create_file(key_file)
    grpc_port, http_port = _free_port(), _free_port()
    log = (directory / "gateway.log").open("wb")
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("shellgate")),
        "serve",
        "--database-url",
        url,
        "--listen",
        f"127.0.0.1:{grpc_port}",
        "--http-listen",
        f"127.0.0.1:{http_port}",
        "--driver",
        "local",
        "--replica-id",
        "soak",
        "--state-dir",
        str(directory / "state"),
        "--encryption-key-file",
        str(key_file),
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        for _ in range(600):
            if process.returncode is not None:
                raise RuntimeError(f"the gateway exited: {_tail(directory)}")
            if await asyncio.to_thread(_ready, f"http://127.0.0.1:{http_port}/readyz"):
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"the gateway was not ready in 60 s: {_tail(directory)}")
        yield process.pid, f"127.0.0.1:{grpc_port}"
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        log.close()


def _tail(directory: Path) -> str:
    path = directory / "gateway.log"
    return path.read_text(errors="replace")[-2000:] if path.exists() else ""


# --- the load ---------------------------------------------------------------------------------


class Population:
    """The sandboxes this run created and has not deleted, and which are in use by a call: a
    delete takes only an idle one, so no other call of this run sees its sandbox vanish."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.born: dict[str, float] = {}
        self.in_use: collections.Counter[str] = collections.Counter()
        self.attached: set[str] = set()
        self.serial = 0

    def new_name(self) -> str:
        self.serial += 1
        return f"soak-{self.serial}"

    def added(self, name: str) -> None:
        self.born[name] = time.monotonic()

    @contextlib.contextmanager
    def borrow(self, older_than_s: float = 0.0) -> Iterator[str | None]:
        now = time.monotonic()
        names = [n for n, born in self.born.items() if now - born >= older_than_s]
        name = self.rng.choice(names) if names else None
        if name is not None:
            self.in_use[name] += 1
        try:
            yield name
        finally:
            if name is not None:
                self.in_use[name] -= 1

    def take_idle(self) -> str | None:
        idle = [n for n in self.born if not self.in_use[n]]
        if not idle:
            return None
        name = self.rng.choice(idle)
        del self.born[name]
        self.attached.discard(name)
        return name


class Load:
    """One client of the gateway: each operation of ``MIX`` as one or a few RPCs."""

    def __init__(self, stub: openshell_pb2_grpc.OpenShellStub, rng: random.Random) -> None:
        self.stub = stub
        self.rng = rng
        self.sandboxes = Population(rng)
        self.ops = 0
        self.errors: collections.Counter[str] = collections.Counter()
        self.updates = 0

    def operation(self, kind: str) -> Callable[[], Awaitable[None]]:
        return {
            "get": self.get,
            "list": self.list_all,
            "list_selector": self.list_selector,
            "setting": self.setting,
            "provider_update": self.provider_update,
            "attach_detach": self.attach_detach,
            "watch": self.watch,
            "exec": self.exec,
            "create": self.create,
            "delete": self.delete,
        }[kind]

    async def run(self, kind: str) -> None:
        try:
            await self.operation(kind)()
            self.ops += 1
        except grpc.aio.AioRpcError as error:
            self.errors[f"{kind} {error.code().name}"] += 1

    async def create(self) -> None:
        if len(self.sandboxes.born) >= 2 * POPULATION:
            return await self.get()
        name = self.sandboxes.new_name()
        request = openshell_pb2.CreateSandboxRequest(
            name=name,
            spec=openshell_pb2.SandboxSpec(),
            labels={"team": f"t{self.sandboxes.serial % 10}", "app": "soak"},
        )
        await self.stub.CreateSandbox(request, timeout=CALL_TIMEOUT_S)
        self.sandboxes.added(name)

    async def delete(self) -> None:
        name = self.sandboxes.take_idle() if len(self.sandboxes.born) > POPULATION // 2 else None
        if name is None:
            return await self.get()
        request = openshell_pb2.DeleteSandboxRequest(name=name)
        await self.stub.DeleteSandbox(request, timeout=CALL_TIMEOUT_S)

    async def get(self) -> None:
        with self.sandboxes.borrow() as name:
            if name is not None:
                request = openshell_pb2.GetSandboxRequest(name=name)
                await self.stub.GetSandbox(request, timeout=CALL_TIMEOUT_S)

    async def list_all(self) -> None:
        request = openshell_pb2.ListSandboxesRequest(page_size=100)
        await self.stub.ListSandboxes(request, timeout=CALL_TIMEOUT_S)

    async def list_selector(self) -> None:
        selector = self.rng.choice(["team=t3", "team in (t1,t2)", "team=nomatch", "app"])
        request = openshell_pb2.ListSandboxesRequest(page_size=100, label_selector=selector)
        await self.stub.ListSandboxes(request, timeout=CALL_TIMEOUT_S)

    async def setting(self) -> None:
        with self.sandboxes.borrow() as name:
            if name is None:
                return
            self.updates += 1
            request = openshell_pb2.UpdateConfigRequest(
                sandbox=name,
                setting_key="dummy_int",
                setting_value=sandbox_pb2.SettingValue(int_value=self.updates),
            )
            await self.stub.UpdateConfig(request, timeout=CALL_TIMEOUT_S)

    async def provider_update(self) -> None:
        self.updates += 1
        provider = datamodel_pb2.Provider(type="github", credentials={"TOKEN": f"t{self.updates}"})
        provider.metadata.name = PROVIDER
        request = openshell_pb2.UpdateProviderRequest(provider=provider)
        await self.stub.UpdateProvider(request, timeout=CALL_TIMEOUT_S)

    async def attach_detach(self) -> None:
        with self.sandboxes.borrow() as name:
            if name is None:
                return
            if name in self.sandboxes.attached:
                self.sandboxes.attached.discard(name)
                detach = openshell_pb2.DetachSandboxProviderRequest(sandbox=name, provider=PROVIDER)
                await self.stub.DetachSandboxProvider(detach, timeout=CALL_TIMEOUT_S)
            else:
                self.sandboxes.attached.add(name)
                attach = openshell_pb2.AttachSandboxProviderRequest(sandbox=name, provider=PROVIDER)
                await self.stub.AttachSandboxProvider(attach, timeout=CALL_TIMEOUT_S)

    async def watch(self) -> None:
        with self.sandboxes.borrow() as name:
            if name is None:
                return
            request = openshell_pb2.WatchSandboxRequest(sandbox=name, follow_status=True)
            call = self.stub.WatchSandbox(request, timeout=CALL_TIMEOUT_S)
            try:
                await call.read()
            finally:
                call.cancel()

    async def exec(self) -> None:
        with self.sandboxes.borrow(older_than_s=READY_AFTER_S) as name:
            if name is None:
                return
            request = openshell_pb2.ExecSandboxRequest(sandbox=name, command=["true"])
            async for _event in self.stub.ExecSandbox(request, timeout=CALL_TIMEOUT_S):
                pass

    async def seed(self) -> None:
        provider = datamodel_pb2.Provider(type="github", credentials={"TOKEN": "t0"})
        provider.metadata.name = PROVIDER
        await self.stub.CreateProvider(
            openshell_pb2.CreateProviderRequest(provider=provider), timeout=CALL_TIMEOUT_S
        )
        for _ in range(POPULATION):
            await self.create()


async def drive(load: Load, rate: float, seconds: float) -> int:
    """``rate`` operations per second drawn from ``MIX`` for ``seconds``; the ones skipped."""
    kinds = list(MIX)
    weights = [MIX[k] for k in kinds]
    pending: set[asyncio.Task[None]] = set()
    skipped = 0
    start = time.perf_counter()
    n = 0
    while True:
        due = start + n / rate
        if due - start >= seconds:
            break
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        n += 1
        if len(pending) >= MAX_IN_FLIGHT:
            skipped += 1
            continue
        task = asyncio.create_task(load.run(load.rng.choices(kinds, weights)[0]))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    return skipped


async def sample_every(pid: int, interval: float, into: list[list[float]]) -> None:
    start = time.perf_counter()
    while True:
        rss, fds, threads = process_sample(pid)
        into.append([time.perf_counter() - start, rss, fds, threads])
        await asyncio.sleep(interval)


async def run_soak(url: str, backend: str, seconds: float, rate: float) -> SoakScale:
    """Seeds the population, then the mixed load for ``seconds`` while sampling the gateway."""
    interval = min(5.0, max(0.2, seconds / 30))
    samples: list[list[float]] = []
    with tempfile.TemporaryDirectory(prefix="shellgate-bench-soak-") as directory:
        async with (
            serve_process(url, Path(directory)) as (pid, address),
            grpc.aio.insecure_channel(address) as channel,
        ):
            load = Load(openshell_pb2_grpc.OpenShellStub(channel), random.Random(17))
            await load.seed()
            sampler = asyncio.create_task(sample_every(pid, interval, samples))
            cpu_from, began = cpu_seconds(pid), time.perf_counter()
            try:
                skipped = await drive(load, rate, seconds)
                samples_end = process_sample(pid)
                cpu = (cpu_seconds(pid) - cpu_from) / (time.perf_counter() - began)
            finally:
                sampler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler
            samples.append([seconds, *samples_end])
    return summarize(backend, seconds, rate, load, skipped, cpu, samples)


def summarize(
    backend: str,
    seconds: float,
    rate: float,
    load: Load,
    skipped: int,
    cpu: float,
    samples: list[list[float]],
) -> SoakScale:
    first, last = samples[0], samples[-1]
    return SoakScale(
        backend=backend,
        minutes=seconds / 60,
        rate=rate,
        ops=load.ops,
        errors=sum(load.errors.values()),
        skipped=skipped,
        rss_start_mb=first[1],
        rss_end_mb=last[1],
        rss_max_mb=max(s[1] for s in samples),
        slope_mb_per_min=slope_per_minute(second_half(samples, seconds)),
        fds_start=int(first[2]),
        fds_end=int(last[2]),
        threads_start=int(first[3]),
        threads_end=int(last[3]),
        cpu_percent=cpu * 100,
        error_kinds=dict(load.errors),
        samples=[[round(v, 3) for v in s] for s in samples],
    )
