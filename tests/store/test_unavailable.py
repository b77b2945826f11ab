"""A lost Postgres connection is StoreUnavailable, and the pool recovers when it returns."""

from __future__ import annotations

import asyncio
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
