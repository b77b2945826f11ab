"""Drive the sandbox reconcile loop by hand: one resync, processed until the queue is idle."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random

from shellgate.controller.gateway import Gateway
from shellgate.controller.reconcile.sandboxes import DEFAULT_STUCK_SECONDS, SandboxReconciler

REPAIRS = (
    "applied",
    "resynced",
    "deadline_exceeded",
    "intent",
    "reissued",
    "marked_error",
    "removed",
    "orphan_deleted",
    "conflict",
    "error",
)
"""Results that mean something was (or failed to be) done; noop and stale are not listed."""


def reconcile_counts(gw: Gateway) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for result in REPAIRS:
        value = gw.metrics.registry.get_sample_value(
            "shellgate_reconcile_total", {"controller": "sandbox", "result": result}
        )
        if value:
            counts[result] = int(value)
    return counts


async def resync_once(
    gw: Gateway,
    *,
    grace_seconds: float = 300.0,
    stuck_seconds: float = DEFAULT_STUCK_SECONDS,
    reconciler: SandboxReconciler | None = None,
) -> dict[str, int]:
    """One resync pass through the work queue; the repairs it made, by result."""
    before = reconcile_counts(gw)
    reconciler = reconciler or SandboxReconciler(
        gw, grace_seconds=grace_seconds, stuck_seconds=stuck_seconds
    )
    workers = asyncio.create_task(reconciler.run(workers=2))
    try:
        await reconciler.resync_forever(0, random_source())
        await asyncio.wait_for(reconciler.queue.wait_idle(), 10)
    finally:
        reconciler.queue.shutdown()
        workers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await workers
    after = reconcile_counts(gw)
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def random_source() -> random.Random:
    return random.Random(0)
