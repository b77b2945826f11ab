"""Replica liveness for drivers whose sandboxes only their owner can touch (the local driver).

Each replica re-writes its heartbeat row every ``interval`` seconds. Another replica judges an
owner lost when the owner's heartbeat is more than ``3 * interval`` older than its own latest
one: both times come from the writing statements (the database clock on Postgres), so the
judgement does not depend on the hosts' clocks agreeing. A replica that cannot write its own
heartbeat judges nobody, since it cannot tell "the owner is gone" from "I am cut off".

A lost owner's sandboxes are only reported (``reconcilers.ownership``); nothing is removed.
A paused owner (SIGSTOP, a long GC, a partition) looks exactly like a dead one from here,
which is why reporting is the only safe thing to do.
"""

from __future__ import annotations

import asyncio
import logging
import os

from shellgate.controller.gateway import Gateway
from shellgate.store import StoreError

log = logging.getLogger(__name__)

HEARTBEAT_ENV = "SHELLGATE_HEARTBEAT_SECONDS"
DEFAULT_HEARTBEAT_SECONDS = 10.0
MISSED_BEATS = 3


def heartbeat_from_environment() -> float:
    """``SHELLGATE_HEARTBEAT_SECONDS`` when set to a positive number, else 10."""
    raw = os.environ.get(HEARTBEAT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_HEARTBEAT_SECONDS
    except ValueError:
        value = 0.0
    if value <= 0:
        log.warning("%s=%r is not a positive number; using %.0f s", HEARTBEAT_ENV, raw, 10.0)
        return DEFAULT_HEARTBEAT_SECONDS
    return value


class OwnerLiveness:
    """This replica's heartbeat, and the judgement of other replicas' liveness."""

    def __init__(self, gw: Gateway, *, interval_seconds: float | None = None) -> None:
        self.gw = gw
        self.interval = (
            heartbeat_from_environment() if interval_seconds is None else interval_seconds
        )
        self.lost_after_ms = int(self.interval * MISSED_BEATS * 1000)
        self._first_ms: int | None = None
        self._last_ms: int | None = None
        self._last_ok = False

    async def beat(self) -> None:
        try:
            written = await self.gw.repos.replicas.beat(self.gw.replica_id, self.gw.grpc_address)
        except StoreError as exc:
            self._last_ok = False
            log.warning("cannot write the heartbeat of replica %s: %s", self.gw.replica_id, exc)
            return
        self._last_ok = True
        self._last_ms = written
        if self._first_ms is None:
            self._first_ms = written

    async def beat_forever(self) -> None:
        while True:
            await self.beat()
            await asyncio.sleep(self.interval)

    async def is_lost(self, owner: str) -> bool:
        """True when ``owner`` has missed its heartbeats, judged against our own latest one."""
        if not self._last_ok or self._last_ms is None or self._first_ms is None:
            return False
        seen = await self.gw.repos.replicas.last_seen_ms(owner)
        if seen is None:  # never beat: lost once we have watched for longer than the limit
            return self._last_ms - self._first_ms >= self.lost_after_ms
        return self._last_ms - seen > self.lost_after_ms
