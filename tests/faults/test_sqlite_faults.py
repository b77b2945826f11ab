"""SQLite under faults, against a real `serve` process: another process holding the lock, and
a database file that cannot be written.

With the lock held elsewhere, calls used to queue behind the one connection, each waiting up
to the busy timeout, and clients saw DEADLINE_EXCEEDED after ten seconds; readiness stayed
200 while every write failed, because its ping is a read. Now each call answers UNAVAILABLE
with a RetryInfo within the bounded lock wait (or before the client's deadline), readiness
follows the real outcomes, and everything acknowledged is stored.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from shellgate.api import datamodel_pb2, openshell_pb2, openshell_pb2_grpc
from tests.faults.support import retry_info_of, seconds_until
from tests.support.processes import GatewayProcess, gateways

pytestmark = [pytest.mark.slow]
P = openshell_pb2

LOCK_WAIT_BOUND_S = 1.0 + 0.6  # lock_wait_ms plus scheduling slack on a shared machine
READINESS_BOUND_S = 1.0

HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


def provider(name: str) -> datamodel_pb2.Provider:
    message = datamodel_pb2.Provider(type="github", credentials={"T": "x"})
    message.metadata.name = name
    return message


async def create(stub: openshell_pb2_grpc.OpenShellStub, name: str, timeout: float = 5.0) -> str:
    """CreateProvider; returns the status code's name."""
    try:
        await stub.CreateProvider(P.CreateProviderRequest(provider=provider(name)), timeout=timeout)
    except grpc.aio.AioRpcError as error:
        assert error.code() != grpc.StatusCode.UNAVAILABLE or retry_info_of(error) is not None
        return error.code().name
    return "OK"


async def stored_names(stub: openshell_pb2_grpc.OpenShellStub) -> set[str]:
    reply = await stub.ListProviders(P.ListProvidersRequest(page_size=1000))
    return {p.metadata.name for p in reply.providers}


def served(tmp_path: Path) -> tuple[GatewayProcess, Path]:
    db = tmp_path / "shellgate.db"
    return GatewayProcess(f"sqlite:///{db}", tmp_path / "state"), db


async def chattr(flag: str, files: list[str]) -> None:
    await asyncio.to_thread(subprocess.run, ["chattr", flag, *files], check=True)


async def test_a_held_lock_answers_unavailable_promptly(tmp_path: Path) -> None:
    gateway, db = served(tmp_path)
    async with gateways([gateway]), grpc.aio.insecure_channel(gateway.address) as channel:
        stub = openshell_pb2_grpc.OpenShellStub(channel)
        assert await create(stub, "before") == "OK"
        holder = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLD_LOCK, str(db), "3", stdout=subprocess.PIPE
        )
        try:
            assert holder.stdout is not None
            assert (await holder.stdout.readline()).strip() == b"locked"
            started = time.monotonic()

            async def timed(name: str, timeout: float) -> tuple[str, float]:
                code = await create(stub, name, timeout)
                return code, time.monotonic() - started

            outcomes = await asyncio.gather(
                *(timed(f"during-{n}", 5.0) for n in range(6)),
                timed("short-deadline", 0.4),
            )
            readiness_lost = await seconds_until(gateway, False, READINESS_BOUND_S)
        finally:
            await asyncio.wait_for(holder.wait(), 10)
        released = time.monotonic()
        assert await create(stub, "after") == "OK"
        readiness_back = await seconds_until(gateway, True, READINESS_BOUND_S)
        names = await stored_names(stub)
    *queued, short = outcomes
    # Every call answered UNAVAILABLE (with RetryInfo, checked in create) within the
    # bound, never DEADLINE_EXCEEDED; the short one before its own deadline.
    assert [code for code, _ in queued] == ["UNAVAILABLE"] * 6
    assert max(elapsed for _, elapsed in queued) < LOCK_WAIT_BOUND_S
    assert short[0] == "UNAVAILABLE" and short[1] < 0.4
    assert readiness_lost < READINESS_BOUND_S
    assert time.monotonic() - released < 10 and readiness_back < READINESS_BOUND_S
    assert {"before", "after"} <= names and not any(n.startswith("during") for n in names)


def _chattr_works(probe: Path) -> bool:
    if shutil.which("chattr") is None:
        return False
    probe.write_text("x")
    made = subprocess.run(["chattr", "+i", str(probe)], capture_output=True).returncode == 0
    if made:
        subprocess.run(["chattr", "-i", str(probe)], check=True)
    return made


async def test_an_unwritable_file_makes_writes_unavailable_and_readiness_follow(
    tmp_path: Path,
) -> None:
    if not _chattr_works(tmp_path / "probe"):
        pytest.skip("chattr +i is not available on this filesystem (needs root and ext4/xfs)")
    gateway, db = served(tmp_path)
    async with gateways([gateway]), grpc.aio.insecure_channel(gateway.address) as channel:
        stub = openshell_pb2_grpc.OpenShellStub(channel)
        assert await create(stub, "before") == "OK"
        # The -shm file is memory-mapped: making it immutable kills the process with
        # SIGBUS, which is another fault. The database and its WAL are what writes hit.
        files = [str(db), f"{db}-wal"]
        await chattr("+i", files)
        try:
            codes = [await create(stub, f"during-{n}") for n in range(3)]
            readiness_lost = await seconds_until(gateway, False, READINESS_BOUND_S)
            still_readable = await stored_names(stub)
        finally:
            await chattr("-i", files)
        readiness_back = await seconds_until(gateway, True, READINESS_BOUND_S)
        assert await create(stub, "after") == "OK"
        names = await stored_names(stub)
    assert codes == ["UNAVAILABLE"] * 3
    assert readiness_lost < READINESS_BOUND_S and readiness_back < READINESS_BOUND_S
    assert "before" in still_readable
    assert {"before", "after"} <= names and not any(n.startswith("during") for n in names)
