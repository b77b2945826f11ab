"""Three `serve` replicas on one durable Postgres under a logged client load, while the
database restarts (``pg_ctl restart -m fast``) and its backends are terminated in a loop.

After each fault: every acknowledged create exists, no call answered INTERNAL or UNKNOWN,
every replica's readiness recovered within a bound, and the history of concurrent
compare-and-swaps (UpdateProvider with the read ``resource_version``) on one hot provider,
sent through all three replicas, is linearizable.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from shellgate.api import openshell_pb2, openshell_pb2_grpc
from tests.faults.load import (
    Workload,
    assert_creates_stored,
    assert_expected_codes,
    assert_hot_register_linearizable,
    run_load,
)
from tests.faults.support import History, seconds_until
from tests.support.processes import GatewayProcess, gateways

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
P = openshell_pb2
READINESS_BOUND_S = 3.0  # the database is back; a replica must follow within this


def pg_ctl(server: Any, *args: str) -> None:
    subprocess.run([server.executable, *args, "-D", server.datadir, "-w"], check=True, timeout=60)


def terminate_backends(dsn: str, database: str, rounds: int) -> None:
    admin = dsn.rpartition("/")[0] + "/postgres"
    for _ in range(rounds):
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (database,),
            )
        time.sleep(0.5)


async def check_after_fault(
    replicas: list[GatewayProcess], stub: openshell_pb2_grpc.OpenShellStub, history: History
) -> None:
    for replica in replicas:
        await seconds_until(replica, True, READINESS_BOUND_S)
    assert not history.codes() & {"INTERNAL", "UNKNOWN"}, history.codes()
    assert_expected_codes(history)
    await assert_creates_stored(stub, history)


async def test_restart_and_terminated_backends_lose_nothing_acknowledged(
    durable_pg: Any, durable_pg_dsn: str, tmp_path: Path
) -> None:
    replicas = [
        GatewayProcess(durable_pg_dsn, tmp_path / f"state-r{n}", replica_id=f"r{n}")
        for n in (1, 2, 3)
    ]
    database = durable_pg_dsn.rpartition("/")[2]
    async with gateways(replicas):
        channels = [grpc.aio.insecure_channel(r.address) for r in replicas]
        stubs = [openshell_pb2_grpc.OpenShellStub(c) for c in channels]
        # Creates and the hot provider only: attaches and settings are covered by
        # test_load_faults.py, and their sandboxes' processes cost this 2-core machine.
        work = Workload(sandboxes=(), hot_clients=6)
        try:
            await work.prepare(stubs[0])
            for fault in ("restart-fast", "terminate-loop"):
                initial = await work.hot_register(stubs[0])
                history = History()
                stop = asyncio.Event()
                running = asyncio.create_task(run_load(stubs, work, history, stop))
                await asyncio.sleep(1.0)
                if fault == "restart-fast":
                    await asyncio.to_thread(pg_ctl, durable_pg, "restart", "-m", "fast")
                else:
                    await asyncio.to_thread(terminate_backends, durable_pg_dsn, database, 6)
                await asyncio.sleep(1.0)
                stop.set()
                await running
                await check_after_fault(replicas, stubs[0], history)
                assert len(history.acknowledged("create")) > 20, fault
                cas_ok = assert_hot_register_linearizable(initial, history)
                unknown = sum(
                    c.op == "cas" and c.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
                    for c in history.calls
                )
                print(f"{fault}: {cas_ok} acknowledged cas, {unknown} with unknown outcome")
                assert cas_ok > 10, fault
        finally:
            for channel in channels:
                await channel.close()
