"""The change feed: writers' hints reach subscribers, in this process and in others."""

from __future__ import annotations

import asyncio

from shellgate.store import ChangeEvent, Store, WriteCondition, connect

MUST_CREATE = WriteCondition.MUST_CREATE


async def next_event(subscription: object, predicate: object, wait_s: float = 5.0) -> ChangeEvent:
    async def wait() -> ChangeEvent:
        while True:
            event = await subscription.get()  # type: ignore[attr-defined]
            if predicate(event):  # type: ignore[operator]
                return event

    return await asyncio.wait_for(wait(), wait_s)


async def test_local_writes_reach_subscribers(store: Store) -> None:
    async with store.subscribe() as subscription:
        await store.put_if("sandbox", "a", "a", b"", {}, MUST_CREATE)
        created = await next_event(subscription, lambda e: e.id == "a")
        assert (created.object_type, created.resource_version, created.deleted) == (
            "sandbox",
            1,
            False,
        )
        await store.put_if("sandbox", "a", "a", b"x", {}, WriteCondition.match(1))
        updated = await next_event(subscription, lambda e: e.id == "a" and e.resource_version == 2)
        assert not updated.deleted
        await store.delete_if("sandbox", "a", 2)
        await next_event(subscription, lambda e: e.id == "a" and e.deleted)


async def test_noop_mutation_sends_no_hint(store: Store) -> None:
    await store.put_if("sandbox", "a", "a", b"", {}, MUST_CREATE)
    await store.put_if("sandbox", "marker", "m", b"", {}, MUST_CREATE)
    async with store.subscribe() as subscription:
        await store.put_if("sandbox", "a", "a", b"", {}, WriteCondition.match(1))
        await store.delete_if("sandbox", "marker", 1)
        seen = []
        event = await next_event(subscription, lambda e: seen.append(e) or e.id == "marker")
        assert event.deleted
        assert [e.resource_version for e in seen if e.id == "a"] == [2]


async def test_writes_from_another_store_reach_subscribers(store_url: str) -> None:
    """Another process (here: another store on the same database) writes; we hear of it."""
    watcher = await connect(store_url)
    writer = await connect(store_url)
    try:
        async with watcher.subscribe() as subscription:
            await asyncio.sleep(0.3)  # let the listener connect; a wildcard may arrive first
            await writer.put_if("sandbox", "far", "far", b"", {}, MUST_CREATE)
            event = await next_event(subscription, lambda e: e.id in ("far", None))
            # Postgres names the row; SQLite's cross-process poll says "something changed".
            assert event.id in ("far", None)
            record = await watcher.get("sandbox", "far")
            assert record is not None
    finally:
        await writer.close()
        await watcher.close()
