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
