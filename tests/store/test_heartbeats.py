"""Replica heartbeats: create-or-bump by CAS, so concurrent beats never lose a bump."""

from __future__ import annotations

import asyncio

from shellgate.store import Store
from shellgate.store.repositories.replicas import REPLICA_TYPE, ReplicaRepository, heartbeat_id


async def test_concurrent_beats_each_bump_the_row_once(store: Store) -> None:
    beats = ReplicaRepository(store)
    times = await asyncio.gather(*(beats.beat("r1") for _ in range(4)))
    record = await store.get(REPLICA_TYPE, heartbeat_id("r1"))
    assert record is not None
    assert record.resource_version == 4  # one create and three bumps: none lost
    assert await beats.last_seen_ms("r1") == max(times)
    assert await beats.last_seen_ms("r2") is None


async def test_the_heartbeat_records_the_grpc_address_and_an_unknown_one_keeps_it(
    store: Store,
) -> None:
    beats = ReplicaRepository(store)
    assert await beats.address_of("r1") is None
    await beats.beat("r1")  # before the server is bound: no address yet
    assert await beats.address_of("r1") is None
    await beats.beat("r1", "10.0.0.5:8080")
    assert await beats.address_of("r1") == "10.0.0.5:8080"
    await beats.beat("r1")  # a beat that was under way before the address was known
    assert await beats.address_of("r1") == "10.0.0.5:8080"
    await beats.beat("r1", "10.0.0.6:8080")  # restarted elsewhere
    assert await beats.address_of("r1") == "10.0.0.6:8080"
    assert await beats.address_of("r2") is None


async def test_a_heartbeat_row_from_before_addresses_reads_as_unknown(store: Store) -> None:
    from shellgate.store.records import WriteCondition

    await store.put_if(
        REPLICA_TYPE, heartbeat_id("old"), None, b"old", {}, WriteCondition.MUST_CREATE
    )
    beats = ReplicaRepository(store)
    assert await beats.address_of("old") is None
    await beats.beat("old", "127.0.0.1:1")  # and a new beat upgrades it in place
    assert await beats.address_of("old") == "127.0.0.1:1"
