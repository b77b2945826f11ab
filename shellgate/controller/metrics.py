"""Prometheus metrics, with closed label sets only: never a sandbox name or id as a value.

``Metrics`` owns one ``CollectorRegistry`` (tests give each server its own) and implements
the store's ``StoreObserver`` hooks, so CAS attempts, conflicts and exhaustion are counted
where they happen. The ``shellgate_sandboxes{phase}`` gauge is computed at scrape time from
the store by the serve loop (``SandboxCounter``), cached for a few seconds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from shellgate import __version__
from shellgate.store.observer import CasResult

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


WRITE_OPERATIONS = frozenset({"put_if", "delete_if"})


@dataclass
class StoreOutcomes:
    """Whether the latest real read and the latest real write reached the database.

    Kept apart because they fail apart: an immutable file or a full disk fails every write
    while reads still succeed, and a successful read must not hide that.
    """

    reads_failing: bool = False
    writes_failing: bool = False
    failed: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by a failure: the health prober wakes up and probes at its failing pace at once,
    instead of after the rest of its healthy interval (up to a second late)."""

    def record(self, operation: str, available: bool) -> None:
        if operation in WRITE_OPERATIONS:
            self.writes_failing = not available
        else:
            self.reads_failing = not available
        if not available:
            self.failed.set()

    @property
    def failing(self) -> bool:
        return self.reads_failing or self.writes_failing


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.store_outcomes = StoreOutcomes()
        r = self.registry
        self.store_unavailable = Counter(
            "shellgate_store_unavailable",
            "Database operations that failed for want of the database (StoreUnavailable).",
            ["backend", "operation"],
            registry=r,
        )
        self.cas_attempts = Counter(
            "shellgate_store_cas_attempts",
            "Attempts of update_message_cas by result.",
            ["object_type", "result"],
            registry=r,
        )
        self.cas_attempts_per_call = Histogram(
            "shellgate_store_cas_attempts_per_call",
            "Attempts one update_message_cas call took.",
            ["object_type"],
            buckets=(1, 2, 3, 4, 5),
            registry=r,
        )
        self.cas_exhausted = Counter(
            "shellgate_store_cas_exhausted",
            "update_message_cas calls that ran out of attempts.",
            ["object_type"],
            registry=r,
        )
        self.store_operation = Histogram(
            "shellgate_store_operation_duration_seconds",
            "Duration of one database operation.",
            ["backend", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.driver_events = Counter(
            "shellgate_driver_events",
            "Driver events handled, by outcome.",
            ["driver", "result"],
            registry=r,
        )
        self.reconcile = Counter(
            "shellgate_reconcile",
            "Reconciliations by controller and result.",
            ["controller", "result"],
            registry=r,
        )
        self.resync_rows = Counter(
            "shellgate_resync_rows",
            "Stored rows a resync pass went through, by what it did with them: unchanged "
            "(skipped without decoding), settled (decided: nothing to do) or queued.",
            ["controller", "outcome"],
            registry=r,
        )
        self.reconcile_duration = Histogram(
            "shellgate_reconcile_duration_seconds",
            "Duration of one reconciliation.",
            ["controller"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.workqueue_depth = Gauge(
            "shellgate_workqueue_depth",
            "Distinct keys waiting in a reconcile work queue.",
            ["queue"],
            registry=r,
        )
        self.workqueue_adds = Counter(
            "shellgate_workqueue_adds",
            "Keys added to a reconcile work queue (a key already waiting is not counted).",
            ["queue"],
            registry=r,
        )
        self.workqueue_retries = Counter(
            "shellgate_workqueue_retries",
            "Keys re-added with backoff after a failed reconcile.",
            ["queue"],
            registry=r,
        )
        self.workqueue_dropped = Counter(
            "shellgate_workqueue_dropped",
            "Keys dropped because the queue was full (the periodic resync brings them back).",
            ["queue"],
            registry=r,
        )
        self.grpc_requests = Counter(
            "shellgate_grpc_requests",
            "gRPC requests by method and status code.",
            ["method", "code"],
            registry=r,
        )
        self.grpc_duration = Histogram(
            "shellgate_grpc_request_duration_seconds",
            "gRPC request duration.",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.sandboxes = Gauge(
            "shellgate_sandboxes",
            "Sandboxes by phase (read from the store at scrape time).",
            ["phase"],
            registry=r,
        )
        self.watch_streams = Gauge(
            "shellgate_watch_streams", "Open WatchSandbox streams.", registry=r
        )
        self.change_feed_lag = Gauge(
            "shellgate_change_feed_lag_seconds",
            "Delay between a row's commit and this replica hearing of it (last hint).",
            registry=r,
        )
        self.store_up = Gauge(
            "shellgate_store_up", "1 when the last background store ping succeeded.", registry=r
        )
        self.driver_watch_up = Gauge(
            "shellgate_driver_watch_up", "1 while the driver's watch is connected.", registry=r
        )
        self.build_info = Gauge(
            "shellgate_build_info", "Build information.", ["version"], registry=r
        )
        self.build_info.labels(version=__version__).set(1)

    # ----- QueueMetrics -------------------------------------------------------------------

    async def reconciled(self, controller: str, reconcile: Awaitable[str]) -> str:
        """Await one reconcile, observe how long it took, count its result, and return it."""
        started = time.perf_counter()
        try:
            result = await reconcile
        finally:
            self.reconcile_duration.labels(controller=controller).observe(
                time.perf_counter() - started
            )
        self.reconcile.labels(controller=controller, result=result).inc()
        return result

    def queue_depth(self, queue: str, depth: int) -> None:
        self.workqueue_depth.labels(queue=queue).set(depth)

    def queue_added(self, queue: str) -> None:
        self.workqueue_adds.labels(queue=queue).inc()

    def queue_retried(self, queue: str) -> None:
        self.workqueue_retries.labels(queue=queue).inc()

    def queue_dropped(self, queue: str) -> None:
        self.workqueue_dropped.labels(queue=queue).inc()

    # ----- StoreObserver ------------------------------------------------------------------

    def cas_attempt(self, object_type: str, result: CasResult) -> None:
        self.cas_attempts.labels(object_type=object_type, result=result).inc()

    def cas_call(self, object_type: str, attempts: int, exhausted: bool) -> None:
        self.cas_attempts_per_call.labels(object_type=object_type).observe(attempts)
        if exhausted:
            self.cas_exhausted.labels(object_type=object_type).inc()

    def operation(
        self, backend: str, operation: str, seconds: float, available: bool | None
    ) -> None:
        self.store_operation.labels(backend=backend, operation=operation).observe(seconds)
        if available is None:
            return
        if not available:
            self.store_unavailable.labels(backend=backend, operation=operation).inc()
        self.store_outcomes.record(operation, available)
