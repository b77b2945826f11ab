"""HTTP endpoints for probes and Prometheus: ``/healthz``, ``/readyz``, ``/metrics``.

``/healthz`` says the process is alive and never touches the database. ``/readyz`` reports the
store (recent real outcomes and a background probe) and the driver watch as JSON, names and
states only, and answers 503 until the first good probe and whenever a check fails.
``/metrics`` refreshes the per-phase sandbox gauge from the store at most every few seconds,
so scrapes stay cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shellgate.api import openshell_pb2
from shellgate.controller.gateway import Gateway
from shellgate.store import StoreError
from shellgate.store.deadline import deadline_in

log = logging.getLogger(__name__)

PING_INTERVAL_SECONDS = 1.0
FAILING_PING_INTERVAL_SECONDS = 0.1
PROBE_BUDGET_SECONDS = 0.2
WRITE_PROBE_EVERY = 5
"""While healthy, one ping in five also writes (this replica's heartbeat row): a ``SELECT 1``
succeeds on a database whose file cannot be written."""
PING_TIMEOUT_SECONDS = 2.0
GAUGE_CACHE_SECONDS = 5.0
PHASE_WORDS = [
    name.removeprefix("SANDBOX_PHASE_").lower() for name, _ in openshell_pb2.SandboxPhase.items()
]


@dataclass
class StoreCheck:
    ok: bool = False
    checked: bool = False


class HealthState:
    """Owned by one task (the pinger); handlers only read it.

    The store check fails at once when a real store call fails for want of the database (the
    store observer records every outcome), and when the background ping fails. It recovers
    with the next real call that succeeds or, without traffic, with the next probe: the pinger
    runs every second, is woken at once by a failing call, probes every 0.1 s while failing
    and then also writes, so a replica whose writes failed does not stay unready for lack of
    writes, nor for the rest of a healthy pause.
    """

    def __init__(self, gw: Gateway, *, warnings: Sequence[str] = ()) -> None:
        self.gw = gw
        self.warnings = list(warnings)
        """How the gateway serves that an operator must know (serving unauthenticated off
        loopback); reported by ``/readyz`` without making the replica unready."""
        self.store = StoreCheck()
        self._pings = 0
        self._gauge_refreshed = 0.0
        self._gauge_query: asyncio.Future[None] | None = None
        self.gauge_queries = 0
        """Aggregate queries run for the gauge (how tests see scrapes share one)."""

    async def ping_forever(self) -> None:
        outcomes = self.gw.metrics.store_outcomes
        while True:
            await self.ping_once()
            outcomes.failed.clear()  # the probe's own failure must not wake it again at once
            failing = not self.store.ok or outcomes.failing
            interval = FAILING_PING_INTERVAL_SECONDS if failing else PING_INTERVAL_SECONDS
            with contextlib.suppress(TimeoutError):  # a failing call cuts the pause short
                await asyncio.wait_for(outcomes.failed.wait(), interval)

    async def ping_once(self) -> None:
        outcomes = self.gw.metrics.store_outcomes
        self._pings += 1
        probe_write = outcomes.failing or self._pings % WRITE_PROBE_EVERY == 0
        try:
            await asyncio.wait_for(self._probe(write=probe_write), PING_TIMEOUT_SECONDS)
        except (TimeoutError, StoreError) as exc:
            if self.store.ok or not self.store.checked:
                log.warning("store ping failed: %s", exc or type(exc).__name__)
            self.store = StoreCheck(False, True)
        else:
            if not self.store.ok and self.store.checked:
                log.info("store ping succeeds again")
            self.store = StoreCheck(True, True)
        self.gw.metrics.store_up.set(1 if self.store_ok() else 0)

    async def _probe(self, *, write: bool) -> None:
        # A short budget: a probe that waits out a whole lock wait (a second on SQLite) would
        # report a recovery that late; a short one fails fast and the next probe tries again.
        with deadline_in(PROBE_BUDGET_SECONDS):
            await self.gw.store.ping()
            if write:
                await self.gw.repos.replicas.beat(self.gw.replica_id)

    def store_ok(self) -> bool:
        return self.store.ok and not self.gw.metrics.store_outcomes.failing

    def readiness(self) -> tuple[bool, dict[str, object]]:
        """Check names and states only: no database error text, no host or replica name
        (the endpoint is unauthenticated; details go to the log and the metrics)."""
        driver_ok = self.gw.driver.watch_ready
        self.gw.metrics.driver_watch_up.set(1 if driver_ok else 0)
        store_ok = self.store_ok()
        store_status = "ok" if store_ok else ("unknown" if not self.store.checked else "failing")
        checks = {
            "store": {"status": store_status},
            "driver": {"status": "ok" if driver_ok else "failing"},
        }
        ready = store_ok and driver_ok
        body: dict[str, object] = {"status": "ready" if ready else "not ready", "checks": checks}
        if self.warnings:
            body["warnings"] = self.warnings
        return ready, body

    async def refresh_sandbox_gauge(self) -> None:
        """Refresh ``shellgate_sandboxes{phase}`` at most every ``GAUGE_CACHE_SECONDS``, by one
        aggregate query (the rows' status column holds the phase), shared by every scrape
        that arrives while it runs: a scrape costs the same with 10 or 100,000 sandboxes,
        and eight at once cost one query."""
        if time.monotonic() - self._gauge_refreshed < GAUGE_CACHE_SECONDS:
            return
        if self._gauge_query is None or self._gauge_query.done():
            self._gauge_query = asyncio.ensure_future(self._count_phases())
        await asyncio.shield(self._gauge_query)

    async def _count_phases(self) -> None:
        counts = await self.gw.repos.sandboxes.phase_counts()
        self.gauge_queries += 1
        for phase in PHASE_WORDS:
            self.gw.metrics.sandboxes.labels(phase=phase).set(counts.pop(phase, 0))
        for phase, count in counts.items():  # "unknown": rows not yet given their phase
            self.gw.metrics.sandboxes.labels(phase=phase).set(count)
        self._gauge_refreshed = time.monotonic()


def build_app(state: HealthState) -> web.Application:
    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_request: web.Request) -> web.Response:
        ready, body = state.readiness()
        return web.json_response(body, status=200 if ready else 503)

    async def metrics(_request: web.Request) -> web.Response:
        with contextlib.suppress(StoreError):
            await state.refresh_sandbox_gauge()
        state.readiness()  # refreshes the driver gauge
        body = generate_latest(state.gw.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def start_http(state: HealthState, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(build_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner
