"""The change feed: writers' hints reach subscribers, in this process and in others."""

from __future__ import annotations

import asyncio
import contextlib
import json

import asyncpg
import pytest

from shellgate.store import ChangeEvent, Store, WriteCondition, connect
from shellgate.store.feed import RowWatch

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


async def woken(watch: RowWatch, wait_s: float = 5.0) -> bool:
    """True when the watch wakes within ``wait_s``; then whether its row may have changed."""
    await asyncio.wait_for(watch.wait(), wait_s)
    return watch.take_change()


async def test_a_row_watch_wakes_for_its_own_row_only(store: Store) -> None:
    """A write wakes the watches of its row and leaves the others asleep: a hint costs the
    streams of one sandbox, whatever the number of streams on other sandboxes."""
    for id in ("a", "b", "marker"):
        await store.put_if("sandbox", id, id, b"", {}, MUST_CREATE)
    async with (
        store.watch_row("a") as a,
        store.watch_row("b") as b,
        store.watch_row("marker") as marker,
    ):
        await asyncio.sleep(0.3)  # a wildcard from the feed's start-up, if any, comes now
        for watch in (a, b, marker):
            watch.take_change()
        await store.put_if("sandbox", "a", "a", b"x", {}, WriteCondition.match(1))
        await store.put_if("sandbox", "marker", "marker", b"x", {}, WriteCondition.match(1))
        assert await woken(a)
        assert await woken(marker)  # hints arrive in commit order: b's would have by now
        assert not b.take_change()
        assert a.last_event is not None and a.last_event.resource_version == 2


async def test_a_row_watch_keeps_a_change_made_before_it_waited(store: Store) -> None:
    """The flag is set while nobody waits, so a change between the read and the wait is
    never lost, and many changes cost one wake-up."""
    await store.put_if("sandbox", "a", "a", b"", {}, MUST_CREATE)
    async with store.watch_row("a") as watch:
        for version in (1, 2, 3):
            payload = b"%d" % version
            await store.put_if("sandbox", "a", "a", payload, {}, WriteCondition.match(version))
        await asyncio.sleep(0.3)
        assert await woken(watch, 1.0)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watch.wait(), 0.2)
        assert not watch.take_change()


async def test_a_write_by_another_process_wakes_row_watches(store_url: str) -> None:
    """Another store on the same database writes: the watch of that row wakes (Postgres names
    the row; SQLite's cross-process poll wakes every watch, since it cannot say which)."""
    watcher = await connect(store_url)
    writer = await connect(store_url)
    try:
        await writer.put_if("sandbox", "far", "far", b"", {}, MUST_CREATE)
        async with watcher.watch_row("far") as watch:
            await asyncio.sleep(0.3)
            watch.take_change()
            await writer.put_if("sandbox", "far", "far", b"x", {}, WriteCondition.match(1))
            assert await woken(watch)
    finally:
        await writer.close()
        await watcher.close()


@pytest.mark.postgres
async def test_a_feed_reconnect_wakes_every_row_watch(pg_dsn: str) -> None:
    """Hints sent while the LISTEN connection was down are lost, so after it reconnects every
    watch wakes once and re-reads: a stream never misses a state because of the gap."""
    store = await connect(pg_dsn)
    try:
        async with store.watch_row("a") as a, store.watch_row("b") as b:
            await asyncio.sleep(0.1)
            a.take_change(), b.take_change()
            admin = await asyncpg.connect(pg_dsn)
            try:
                terminated = await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
            finally:
                await admin.close()
            assert terminated == 1
            assert await woken(a, 10.0)
            assert await woken(b, 10.0)
    finally:
        await store.close()


async def test_a_version_touch_reaches_another_store(store_url: str) -> None:
    """``touch_by_name`` (the provider fence of an attach) is a write like any other: another
    replica hears of it, by row on Postgres, so its view of the version is never stale."""
    watcher = await connect(store_url)
    writer = await connect(store_url)
    try:
        await writer.put_if("provider", "p1", "key", b"", {}, MUST_CREATE)
        async with watcher.subscribe() as subscription:
            await asyncio.sleep(0.3)  # let the listener connect; a wildcard may arrive first
            assert await writer.touch_by_name("provider", "key") == 2
            event = await next_event(
                subscription, lambda e: e.id is None or (e.id == "p1" and e.resource_version == 2)
            )
            if writer.backend == "postgres":
                assert (event.id, event.resource_version) == ("p1", 2)
        assert await writer.touch_by_name("provider", "ghost") is None
    finally:
        await writer.close()
        await watcher.close()


@pytest.mark.postgres
async def test_label_writes_are_announced_once_each(pg_dsn: str) -> None:
    """Writes that change labels also run migration 007's label-table trigger in their
    statement; the trigger writes object_labels only, so LISTEN hears each write exactly
    once, from the statement (PostgresDialect.announced), and nothing else."""
    store = await connect(pg_dsn)
    listener = await asyncpg.connect(pg_dsn)
    heard: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener("shellgate_objects", lambda *args: heard.put_nowait(args[3]))
        await store.put_if("sandbox", "a", "a", b"", {"team": "x", "tier": "1"}, MUST_CREATE)
        await store.put_if("sandbox", "a", "a", b"1", {"team": "y"}, WriteCondition.match(1))
        await store.put_if("sandbox", "a", "a", b"2", None, WriteCondition.match(2))
        assert await store.delete_if("sandbox", "a", 3)
        await store.put_if("sandbox", "marker", "m", b"", {}, MUST_CREATE)
        seen = []
        while not seen or seen[-1][0] != "marker":
            event = json.loads(await asyncio.wait_for(heard.get(), 5.0))
            seen.append((event["i"], event["v"], event["d"]))
        assert seen == [
            ("a", 1, False),
            ("a", 2, False),
            ("a", 3, False),
            ("a", None, True),
            ("marker", 1, False),
        ]
        assert await store._rows("SELECT count(*) FROM object_labels", ()) == [(0,)]  # type: ignore[attr-defined]
    finally:
        await listener.close()
        await store.close()
