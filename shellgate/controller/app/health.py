"""HTTP endpoints for probes and Prometheus: ``/healthz``, ``/readyz``, ``/metrics``.

``/healthz`` says the process is alive and never touches the database. ``/readyz`` reports the
background store ping and the driver watch as JSON, and answers 503 until the first good ping
and whenever a check fails. ``/metrics`` refreshes the per-phase sandbox gauge from the store
at most every few seconds, so scrapes stay cheap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shellgate.api import openshell_pb2
from shellgate.controller.gateway import Gateway
from shellgate.store import StoreError

log = logging.getLogger(__name__)

PING_INTERVAL_SECONDS = 5.0
PING_TIMEOUT_SECONDS = 2.0
GAUGE_CACHE_SECONDS = 5.0
PHASE_WORDS = [
    name.removeprefix("SANDBOX_PHASE_").lower() for name, _ in openshell_pb2.SandboxPhase.items()
]


@dataclass
class StoreCheck:
    ok: bool = False
    checked: bool = False
    latency_ms: float = 0.0
    error: str = ""


class HealthState:
    """Owned by one task (the pinger); handlers only read it."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.store = StoreCheck()
        self._gauge_refreshed = 0.0
        self._gauge_query: asyncio.Future[None] | None = None
        self.gauge_queries = 0
        """Aggregate queries run for the gauge (how tests see scrapes share one)."""

    async def ping_forever(self) -> None:
        while True:
            await self.ping_once()
            await asyncio.sleep(PING_INTERVAL_SECONDS)

    async def ping_once(self) -> None:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(self.gw.store.ping(), PING_TIMEOUT_SECONDS)
        except (TimeoutError, StoreError) as exc:
            if self.store.ok or not self.store.checked:
                log.warning("store ping failed: %s", exc or type(exc).__name__)
            self.store = StoreCheck(False, True, 0.0, str(exc) or type(exc).__name__)
        else:
            latency = (time.perf_counter() - started) * 1000
            self.store = StoreCheck(True, True, round(latency, 2), "")
        self.gw.metrics.store_up.set(1 if self.store.ok else 0)

    def readiness(self) -> tuple[bool, dict[str, object]]:
        driver_ok = self.gw.driver.watch_ready
        self.gw.metrics.driver_watch_up.set(1 if driver_ok else 0)
        checks = {
            "store": {
                "status": "ok"
                if self.store.ok
                else ("unknown" if not self.store.checked else "failing"),
                "latency_ms": self.store.latency_ms,
                "error": self.store.error,
            },
            "driver": {"status": "ok" if driver_ok else "failing", "name": self.gw.driver.name},
        }
        ready = self.store.ok and driver_ok
        return ready, {
            "status": "ready" if ready else "not ready",
            "replica": self.gw.replica_id,
            "checks": checks,
        }

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
        return web.json_response({"status": "alive", "replica": state.gw.replica_id})

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
