"""Three `serve` replicas on one durable Postgres under a logged load of creates,
attaches/detaches, settings and compare-and-swaps on one hot provider, through three faults:

1. Postgres stopped with ``-m immediate`` (no shutdown checkpoint, every connection cut),
   down 2 s, started again, and at once every free connection slot taken by the test and
   held 3 s: the replicas come back to a database that refuses them.
2. One replica SIGSTOPped for 5 s, then SIGCONT.
3. One replica SIGKILLed mid-burst (it stays dead).

After each: no call answered INTERNAL or UNKNOWN (only OK, UNAVAILABLE, DEADLINE_EXCEEDED,
ABORTED); every acknowledged create exists; each attach pair and each setting is in a state
its calls allow (the last acknowledged one, or one of a call with an unknown outcome); the
hot provider's history is linearizable; every live replica is ready within a bound of the
fault's end; and a WatchSandbox stream opened on a replica that was not hit, before the
fault, sees a change made after it.

What the stream does, from the code: it watches its row on the change feed and re-reads the
row on a hint about it. The feed's LISTEN connection reconnects by itself and then tells
every watcher to re-read, so a stream whose re-reads all fall outside a database outage
carries on; one that re-reads during the outage ends with UNAVAILABLE (with RetryInfo), and a
re-opened stream starts with the current row. Replica faults never touch another replica's
streams, so there the stream must carry on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from shellgate.api import openshell_pb2, openshell_pb2_grpc
from tests.faults.load import (
    Stub,
    Workload,
    assert_attaches_and_settings_stored,
    assert_creates_stored,
    assert_expected_codes,
    assert_hot_register_linearizable,
    provider,
    run_load,
)
from tests.faults.support import History, retry_info_of, seconds_until
from tests.support.processes import GatewayProcess, gateways, http_get

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(180)]
P = openshell_pb2
READINESS_BOUND_S = 3.0  # from the fault's end (database back, SIGCONT) to /readyz 200
WATCHED = "watched"
LOAD_BEFORE_S = 1.0
LOAD_AFTER_S = 1.0
DOWN_S, SLOTS_HELD_S, PAUSED_S = 2.0, 3.0, 5.0


# ---- Postgres faults ---------------------------------------------------------------------


def pg_ctl(server: Any, *args: str) -> None:
    subprocess.run([server.executable, *args, "-D", server.datadir, "-w"], check=True, timeout=60)


def start_again(server: Any) -> None:
    """Start the stopped server with the options it was first started with."""
    args = shlex.split(server.command)
    subprocess.run([*args, "-w"] if "-w" not in args else args, check=True, timeout=60)


async def take_every_slot(dsn: str) -> list[asyncpg.Connection]:
    """Open connections until the server refuses one for want of slots."""
    held: list[asyncpg.Connection] = []
    while True:
        batch = await asyncio.gather(
            *(asyncpg.connect(dsn, timeout=5) for _ in range(8)), return_exceptions=True
        )
        held += [c for c in batch if isinstance(c, asyncpg.Connection)]
        if any(isinstance(c, asyncpg.TooManyConnectionsError) for c in batch):
            return held
        errors = [c for c in batch if isinstance(c, BaseException)]
        if errors and not all(isinstance(e, asyncpg.CannotConnectNowError) for e in errors):
            raise errors[0]


async def take_the_replicas_slots(dsn: str, held: list[asyncpg.Connection], database: str) -> None:
    """Cut the replicas' connections one by one, each time taking the freed slot at once,
    so that they have to reconnect to a full server (their pools kept working otherwise)."""
    pids = await held[0].fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        database,
    )
    for row in pids:
        await held[0].fetchval("SELECT pg_terminate_backend($1, 2000)", row["pid"])
        with contextlib.suppress(asyncpg.TooManyConnectionsError):
            held.append(await asyncpg.connect(dsn, timeout=2))


async def hold_every_slot(dsn: str, database: str, seconds: float, marks: dict[str, float]) -> int:
    """Take every slot and the replicas' own, keep the server full for ``seconds`` (taking
    any slot that frees up), then release. Returns how many connections were held at most;
    ``marks["full"]`` is when the replicas lost their last connection."""
    held = await take_every_slot(dsn)
    await take_the_replicas_slots(dsn, held, database)
    marks["full"] = time.monotonic()
    most = len(held)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(asyncpg.TooManyConnectionsError):
                held.append(await asyncpg.connect(dsn, timeout=1))
            most = max(most, len(held))
            await asyncio.sleep(0.05)
    finally:
        await asyncio.gather(*(c.close(timeout=2) for c in held), return_exceptions=True)
    return most


async def sample_readiness(
    replicas: list[GatewayProcess], samples: dict[str, list[tuple[float, int]]]
) -> None:
    """Poll every replica's /readyz every 100 ms (status 0: no answer) until cancelled."""

    async def one(replica: GatewayProcess) -> None:
        while True:
            at = time.monotonic()
            try:
                status, _ = await asyncio.to_thread(http_get, f"{replica.http}/readyz", 0.5)
            except OSError:
                status = 0
            samples.setdefault(replica.replica_id, []).append((at, status))
            await asyncio.sleep(0.1)

    await asyncio.gather(*(one(r) for r in replicas))


# ---- a watch stream ----------------------------------------------------------------------


@dataclass
class Watch:
    """A WatchSandbox stream read in the background: the rows it sent, and how it ended."""

    stub: Stub
    sandbox: str
    rows: list[P.Sandbox] = field(default_factory=list)
    ended: str | None = None
    ended_with_retry_info: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    async def open(self) -> Watch:
        first = asyncio.Event()
        self._task = asyncio.create_task(self._read(first))
        await asyncio.wait_for(first.wait(), 10)
        assert self.rows, f"the stream ended at once: {self.ended}"
        return self

    async def _read(self, first: asyncio.Event) -> None:
        stream = self.stub.WatchSandbox(P.WatchSandboxRequest(sandbox=self.sandbox))
        try:
            async for event in stream:
                if event.HasField("sandbox"):
                    self.rows.append(event.sandbox)
                    self.changed.set()
                    first.set()
            self.ended = "OK"
        except grpc.aio.AioRpcError as error:
            self.ended = error.code().name
            self.ended_with_retry_info = retry_info_of(error) is not None
        finally:
            self.changed.set()
            first.set()

    def shows(self, marker: str) -> bool:
        return any(marker in row.spec.providers for row in self.rows)

    async def close(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def until_ok(call: Callable[[], Awaitable[Any]], timeout: float = 15.0) -> Any:
    """Retry a call that answers UNAVAILABLE, as a client following RetryInfo does."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def change_reaches(watch: Watch, stub: Stub, marker: str) -> str:
    """Attach ``marker`` to the watched sandbox; 'resumed' if the open stream shows it,
    'reopened' if the stream had ended with UNAVAILABLE and a new one shows it."""
    request = P.AttachSandboxProviderRequest(sandbox=WATCHED, provider=marker)
    await until_ok(lambda: stub.AttachSandboxProvider(request, timeout=3))
    with contextlib.suppress(asyncio.TimeoutError):
        async with asyncio.timeout(5):
            while True:
                watch.changed.clear()  # before looking, so no row slips in between
                if watch.shows(marker) or watch.ended is not None:
                    break
                await watch.changed.wait()
    versions = [row.metadata.resource_version for row in watch.rows]
    assert versions == sorted(set(versions)), f"versions went back or repeated: {versions}"
    if watch.shows(marker):
        return "resumed"
    assert watch.ended == "UNAVAILABLE" and watch.ended_with_retry_info, watch.ended
    reopened = await Watch(stub, WATCHED).open()
    try:
        assert reopened.shows(marker)
    finally:
        await reopened.close()
    return "reopened"


# ---- the experiments ---------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    calls: int
    acknowledged: int
    unknown: int
    stale_states: dict[str, int]
    cas_ok: int
    readiness_s: float
    watch: str
    samples: dict[str, list[tuple[float, int]]]

    def not_ready_between(self, replica: str, start: float, end: float) -> bool:
        return any(start <= at <= end and code == 503 for at, code in self.samples[replica])


async def experiment(
    name: str,
    replicas: list[GatewayProcess],
    stubs: list[Stub],
    work: Workload,
    fault: Callable[[], Awaitable[list[GatewayProcess]]],
) -> tuple[Outcome, History]:
    """Load, fault, load; then every check. ``fault`` returns the replicas alive after it;
    replica 1 (``stubs[0]``) is never hit and serves the watch and the reads."""
    initial = await work.hot_register(stubs[0])
    watch = await Watch(stubs[0], WATCHED).open()
    history, stop = History(), asyncio.Event()
    samples: dict[str, list[tuple[float, int]]] = {}
    sampler = asyncio.create_task(sample_readiness(replicas, samples))
    running = asyncio.create_task(run_load(stubs, work, history, stop))
    try:
        await asyncio.sleep(LOAD_BEFORE_S)
        alive = await fault()
        readiness = await asyncio.gather(
            *(seconds_until(r, True, READINESS_BOUND_S) for r in alive)
        )
        await asyncio.sleep(LOAD_AFTER_S)
    finally:
        stop.set()
        await running
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    try:
        watch_result = await change_reaches(watch, stubs[0], f"m-{name}")
    finally:
        await watch.close()
    assert_expected_codes(history)
    await assert_creates_stored(stubs[0], history)
    stale = await assert_attaches_and_settings_stored(stubs[0], work, history)
    cas_ok = assert_hot_register_linearizable(initial, history)
    outcome = Outcome(
        name,
        len(history.calls),
        sum(c.code == "OK" for c in history.calls),
        sum(c.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED") for c in history.calls),
        stale,
        cas_ok,
        max(readiness),
        watch_result,
        samples,
    )
    # Shown with -s: what each fault did to the load.
    print({k: v for k, v in vars(outcome).items() if k != "samples"})
    assert outcome.acknowledged > 50 and cas_ok > 3, outcome
    return outcome, history


async def test_database_and_replica_faults_lose_nothing_acknowledged(
    durable_pg: Any, durable_pg_dsn: str, tmp_path: Path
) -> None:
    replicas = [
        GatewayProcess(durable_pg_dsn, tmp_path / f"state-r{n}", replica_id=f"r{n}")
        for n in (1, 2, 3)
    ]
    r1, r2, r3 = replicas
    admin = f"postgresql://{durable_pg.user}@{durable_pg.host}:{durable_pg.port}/postgres"
    database_name = durable_pg_dsn.rpartition("/")[2]
    work = Workload()
    marks: dict[str, float] = {}
    async with gateways(replicas):
        channels = [grpc.aio.insecure_channel(r.address) for r in replicas]
        stubs = [openshell_pb2_grpc.OpenShellStub(c) for c in channels]
        try:
            await work.prepare(stubs[0], extra_sandboxes=(WATCHED,))
            for marker in ("m-database", "m-pause", "m-kill"):
                await stubs[0].CreateProvider(P.CreateProviderRequest(provider=provider(marker)))

            async def database_down_then_full() -> list[GatewayProcess]:
                marks["stop"] = time.monotonic()
                await asyncio.to_thread(pg_ctl, durable_pg, "stop", "-m", "immediate")
                await asyncio.sleep(DOWN_S)
                await asyncio.to_thread(start_again, durable_pg)
                marks["started"] = time.monotonic()
                assert await hold_every_slot(admin, database_name, SLOTS_HELD_S, marks) > 10
                marks["released"] = time.monotonic()
                return replicas

            async def pause_r2() -> list[GatewayProcess]:
                assert r2.process is not None
                r2.process.send_signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(PAUSED_S)
                finally:
                    r2.process.send_signal(signal.SIGCONT)
                return replicas

            async def kill_r3() -> list[GatewayProcess]:
                assert r3.process is not None
                os.kill(r3.process.pid, signal.SIGKILL)
                await asyncio.to_thread(r3.process.wait, 10)
                return [r1, r2]

            database, history = await experiment(
                "database", replicas, stubs, work, database_down_then_full
            )
            # Every replica was alive: each UNAVAILABLE came from a handler, with RetryInfo.
            unavailable = [c for c in history.calls if c.code == "UNAVAILABLE"]
            assert unavailable and all(c.retry_info for c in unavailable)
            # Readiness followed: 503 while the database was down, on every replica.
            for replica in replicas:
                assert database.not_ready_between(
                    replica.replica_id, marks["stop"], marks["started"]
                )
            # With every slot taken, calls that needed a new connection were refused.
            refused = [
                c
                for c in unavailable
                if marks["full"] <= c.invoked and c.answered <= marks["released"]
            ]
            assert refused, "the full server refused no call"
            lost = [
                r.replica_id
                for r in replicas
                if database.not_ready_between(r.replica_id, marks["full"], marks["released"])
            ]
            print(f"UNAVAILABLE while full: {len(refused)}; not ready while full: {lost}")
            paused, history = await experiment("pause", replicas, stubs, work, pause_r2)
            assert paused.watch == "resumed"
            assert any(c.code == "DEADLINE_EXCEEDED" for c in history.calls)
            killed, _ = await experiment("kill", replicas, stubs, work, kill_r3)
            assert killed.watch == "resumed"
        finally:
            for channel in channels:
                await channel.close()
