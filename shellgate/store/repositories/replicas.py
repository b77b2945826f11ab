"""Replica heartbeats: one row per replica, re-written by compare-and-swap while it runs.

Other replicas judge whether a sandbox's owner is still alive from that row's
``updated_at_ms``. The row is written by the writing statement's clock (the database's on
Postgres), and a replica compares another's heartbeat with *its own* latest heartbeat time
rather than with its local clock, so skewed clocks between hosts do not make a live owner look
dead. A replica whose heartbeat write fails (its store is down) therefore judges nobody.

The row also says where the replica serves gRPC (``grpc_address``), so a call about a sandbox
that only its owner can run (the local driver) can be forwarded there. The payload is a small
JSON object; a row written before the address was recorded holds the bare replica id and
reads as "address unknown".
"""

from __future__ import annotations

import json

from shellgate.store.base import Store
from shellgate.store.errors import Conflict, NotFound, UniqueViolation
from shellgate.store.records import WriteCondition

REPLICA_TYPE = "replica_heartbeat"


def heartbeat_id(replica_id: str) -> str:
    return f"replica-heartbeat/{replica_id}"


class ReplicaRepository:
    object_type = REPLICA_TYPE

    def __init__(self, store: Store) -> None:
        self.store = store

    async def beat(self, replica_id: str, grpc_address: str = "") -> int:
        """Create or bump this replica's heartbeat row, recording where it serves gRPC;
        returns the time it was written. An empty address (not known yet: a beat before the
        server is bound) keeps the recorded one, so a beat that was under way when the
        address was first written cannot erase it."""
        row_id = heartbeat_id(replica_id)

        async def attempt() -> int:
            current = await self.store.get(REPLICA_TYPE, row_id)
            condition = (
                WriteCondition.MUST_CREATE
                if current is None
                else WriteCondition.match(current.resource_version)
            )
            address = grpc_address or (_address_in(current.payload) if current else None) or ""
            payload = json.dumps({"replica_id": replica_id, "grpc_address": address}).encode()
            written = await self.store.put_if(REPLICA_TYPE, row_id, None, payload, {}, condition)
            return written.updated_at_ms

        return await self.store.retry_on_conflict(
            attempt, object_type=REPLICA_TYPE, retriable=(Conflict, UniqueViolation, NotFound)
        )

    async def last_seen_ms(self, replica_id: str) -> int | None:
        """When the replica last wrote its heartbeat; None if it never did."""
        record = await self.store.get(REPLICA_TYPE, heartbeat_id(replica_id))
        return None if record is None else record.updated_at_ms

    async def address_of(self, replica_id: str) -> str | None:
        """Where the replica last said it serves gRPC; None if unknown."""
        record = await self.store.get(REPLICA_TYPE, heartbeat_id(replica_id))
        return None if record is None else _address_in(record.payload)


def _address_in(payload: bytes) -> str | None:
    try:
        fields = json.loads(payload)
    except ValueError:
        return None  # written before addresses were recorded: the bare replica id
    address = fields.get("grpc_address") if isinstance(fields, dict) else None
    return address if isinstance(address, str) and address else None
