"""A lost Postgres connection is StoreUnavailable, and the pool recovers when it returns."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from shellgate.store import StoreUnavailable, WriteCondition, connect
from tests.support.proxy import TcpProxy

pytestmark = pytest.mark.postgres


def through_proxy(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=f"{user}@127.0.0.1:{port}"))


async def test_outage_raises_unavailable_then_recovers(pg_dsn: str) -> None:
    target = urlsplit(pg_dsn)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    store = await connect(through_proxy(pg_dsn, proxy.port))
    try:
        await store.put_if("sandbox", "a", "a", b"", {}, WriteCondition.MUST_CREATE)
        proxy.cut()
        with pytest.raises(StoreUnavailable):
            await store.get("sandbox", "a")
        with pytest.raises(StoreUnavailable):
            await store.ping()
        proxy.restore()
        for _ in range(50):  # the pool reconnects on its own; no restart of the store
            try:
                record = await store.get("sandbox", "a")
                break
            except StoreUnavailable:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the store did not recover after the database came back")
        assert record is not None and record.resource_version == 1
    finally:
        await store.close()
        await proxy.stop()


async def test_unreachable_database_at_connect_is_unavailable() -> None:
    with pytest.raises(StoreUnavailable):
        await connect("postgresql://nobody@127.0.0.1:1/none")


async def _terminate_other_backends(dsn: str) -> int:
    import asyncpg

    admin = await asyncpg.connect(dsn)
    try:
        return int(
            await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    finally:
        await admin.close()


async def test_terminated_backends_are_unavailable_never_internal(pg_dsn: str) -> None:
    """pg_terminate_backend under load: reads are retried once on a fresh connection, a CAS
    answers StoreUnavailable or succeeds, and the pool replaces every broken connection."""
    from shellgate.api import openshell_pb2
    from shellgate.store import Conflict, StoreError

    store = await connect(pg_dsn)
    created = openshell_pb2.Sandbox()
    created.metadata.id, created.metadata.name = "a", "a"
    await store.create_message(created)

    def bump(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        message.status.current_policy_version += 1
        return message

    async def traffic() -> list[str]:
        outcomes = []
        for _ in range(60):
            try:
                await store.update_message_cas(openshell_pb2.Sandbox, "a", bump)
                await store.get("sandbox", "a")
                outcomes.append("ok")
            except StoreUnavailable:
                outcomes.append("unavailable")
            except Conflict:  # six writers on one row may exhaust their retries: ABORTED
                outcomes.append("conflict")
            except StoreError as exc:  # anything else would reach a client as INTERNAL
                outcomes.append(f"other: {type(exc).__name__}: {exc}")
            await asyncio.sleep(0.005)
        return outcomes

    try:
        workers = [asyncio.create_task(traffic()) for _ in range(6)]
        for _ in range(8):
            await asyncio.sleep(0.03)
            await _terminate_other_backends(pg_dsn)
        outcomes = [o for worker in workers for o in await worker]
        assert [o for o in outcomes if o.startswith("other")] == []
        assert outcomes.count("ok") > 0
        record = await store.get("sandbox", "a")  # the pool recovered by itself
        assert record is not None
    finally:
        await store.close()


async def test_a_cas_that_cannot_get_a_connection_is_unavailable(pg_dsn: str) -> None:
    """The pinned connection of a CAS attempt is acquired inside the error mapping, and
    waiting for one is bounded."""
    from shellgate.api import openshell_pb2
    from shellgate.store.postgres import PostgresStore

    store = PostgresStore(pg_dsn, min_size=1, max_size=1, acquire_timeout=0.2)
    await store.open()
    try:
        created = openshell_pb2.Sandbox()
        created.metadata.id, created.metadata.name = "a", "a"
        await store.create_message(created)
        holding, release = asyncio.Event(), asyncio.Event()

        async def hold_the_only_connection() -> None:
            async with store._attempt_scope():
                holding.set()
                await release.wait()

        holder = asyncio.create_task(hold_the_only_connection())
        await holding.wait()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(
                store.update_message_cas(openshell_pb2.Sandbox, "a", lambda m: m), 5
            )
        release.set()
        await holder
        assert (await store.update_message_cas(openshell_pb2.Sandbox, "a", lambda m: m)).message
    finally:
        await store.close()


async def test_a_statement_stuck_on_a_lock_times_out_as_unavailable(pg_dsn: str) -> None:
    import asyncpg

    from shellgate.store.postgres import PostgresStore

    store = PostgresStore(pg_dsn, statement_timeout=0.3)
    await store.open()
    admin = await asyncpg.connect(pg_dsn)
    try:
        await store.put_if("sandbox", "a", "a", b"", {}, WriteCondition.MUST_CREATE)
        locker = admin.transaction()
        await locker.start()
        await admin.execute("SELECT 1 FROM objects WHERE id = 'a' FOR UPDATE")
        with pytest.raises(StoreUnavailable):
            await store.put_if("sandbox", "a", "a", b"x", None, WriteCondition.match(1))
        await locker.rollback()
        result = await store.put_if("sandbox", "a", "a", b"x", None, WriteCondition.match(1))
        assert result.resource_version == 2
    finally:
        await admin.close()
        await store.close()


async def test_an_sqlite_file_that_cannot_be_created_is_one_clear_error(
    tmp_path: Path,
) -> None:
    """Root ignores file modes, so the path runs through a regular file instead."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    path = blocker / "shellgate.db"
    with pytest.raises(StoreUnavailable) as refused:
        await connect(f"sqlite:///{path}")
    message = str(refused.value)
    assert str(path) in message and message.endswith("File exists")
    assert "\n" not in message


@pytest.mark.parametrize("option", ["busy_timeout_ms=soon", "lock_wait_ms=-5", "lock_wait_ms=0"])
def test_a_bad_sqlite_url_option_is_a_configuration_error(option: str) -> None:
    from shellgate.store import ConfigurationError, store_for_url

    with pytest.raises(ConfigurationError, match=option.split("=")[0]):
        store_for_url(f"sqlite:///x.db?{option}")


@pytest.mark.parametrize("path", ["cas", "read"])
async def test_a_server_that_stops_answering_is_unavailable_within_the_statement_clock(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The backend serving the store is stopped (SIGSTOP): its socket stays open and the
    server's own statement_timeout cannot fire, so only the client's statement clock
    (pg_pool.py) ends the call: a write as UNAVAILABLE, a read by being tried once more on a
    new connection. Either way nothing hangs, and the next call works."""
    import os
    import signal

    from shellgate.api import openshell_pb2
    from shellgate.store import postgres
    from tests.support.objects import sandbox

    monkeypatch.setattr(postgres, "CLIENT_TIMEOUT_SLACK", 0.3)
    store = postgres.PostgresStore(pg_dsn, min_size=1, max_size=1, statement_timeout=0.2)
    await store.open()
    try:
        created = await store.create_message(sandbox("alpha"))
        pid = int((await store._row("SELECT pg_backend_pid()", ()))[0])

        def bump(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
            message.status.current_policy_version += 1
            return message

        def call() -> asyncio.Future[object]:
            if path == "cas":
                update = store.update_message_cas(openshell_pb2.Sandbox, created.metadata.id, bump)
                return asyncio.ensure_future(update)
            return asyncio.ensure_future(store.get("sandbox", created.metadata.id))

        os.kill(pid, signal.SIGSTOP)
        try:
            if path == "cas":
                with pytest.raises(StoreUnavailable):
                    await asyncio.wait_for(call(), 10)
            else:  # a read that lost its connection is tried once more, on a new one
                assert await asyncio.wait_for(call(), 10) is not None
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await asyncio.wait_for(call(), 10) is not None
    finally:
        await store.close()
