"""The periodic sweep: repair drift between the store and the compute driver.

Watches miss things: a stream that was down missed a deletion, a replica died between moving a
row to STOPPING and asking the driver, an object was removed behind the gateway's back. Every
replica therefore sweeps, every ``interval`` seconds with ±20 % jitter, and, like everything
else in shellgate, repairs only through version-bound writes: a CAS at the exact
``resource_version`` it read (``update_message_cas(..., expected_version=rv)``) or
``delete_if(id, rv)``. Two replicas sweeping at once cannot undo each other, and a row that
changed after it was read is left for the next pass (counted as ``conflict``).

One pass (``sweep_once``):

1. Note the time, list what the driver has, then page through the sandbox rows. A row updated
   after the listing started is skipped: it is newer than what the listing says.
2. **Row with an object**: the listed snapshot is applied, bound to the version read
   (``resynced`` when it changed something). A row still STOPPING, STARTING or DELETING after
   that, and not written for ``stuck`` seconds (default 60) before the pass, gets its driver
   call re-issued (``reissued``); driver calls are idempotent.
3. **Row without an object**, older than the grace period (default 300 s): the driver is asked
   once more (``get_sandbox``) in case the listing was stale. If it is really gone, a row that
   was STOPPING, STOPPED or STARTING becomes ERROR with reason ``ComputeResourceMissing``
   (``marked_error``): the user asked for something that can no longer happen and should see
   why. Any other row is removed with ``delete_if(id, rv)`` (``removed``), as when a watch
   reports the object gone. An ERROR row that the sweep itself marked stays until the user
   deletes it (the reference would remove it on the next pass; keeping it keeps the reason
   visible).
4. **Object without a row** (an orphan, e.g. its row was removed while the object's deletion
   failed): after confirming that the row is still absent, the object is deleted through the
   driver (``orphan_deleted``). Objects already being deleted are left alone.

With a driver whose sandboxes only one replica can touch (``routes_by_owner``, the local
driver), a replica considers only the sandboxes its driver ``owns``. Every repair is counted in
``shellgate_reconcile_total{controller="sweep", result=<repair>}`` and each pass's duration in
``shellgate_reconcile_duration_seconds{controller="sweep"}``; a pass that could not run is
``result="error"``.

Times: ``updated_at_ms`` comes from the database (its clock on Postgres), the pass's start from
this replica's clock. Skew between them only widens or narrows the grace period a little; it
cannot cause a wrong write, because every write is bound to the version read.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.base import DriverError
from shellgate.controller.gateway import Gateway
from shellgate.reconcilers import sandbox as sandbox_rules
from shellgate.reconcilers.sandbox import (
    MISSING_TO_ERROR,
    is_marked_missing,
    mark_compute_missing,
)
from shellgate.reconcilers.snapshot import DriverSnapshot
from shellgate.store import Conflict, NotFound, ObjectRecord, StoreError, decode

log = logging.getLogger(__name__)

Sandbox = openshell_pb2.Sandbox
STOPPING = openshell_pb2.SANDBOX_PHASE_STOPPING
STARTING = openshell_pb2.SANDBOX_PHASE_STARTING
DELETING = openshell_pb2.SANDBOX_PHASE_DELETING

DEFAULT_GRACE_SECONDS = 300.0
GRACE_ENV = "SHELLGATE_SWEEP_GRACE_SECONDS"
DEFAULT_STUCK_SECONDS = 60.0
JITTER = 0.2
PAGE_SIZE = 500

_REISSUED = frozenset({STOPPING, STARTING, DELETING})

Counts = collections.Counter[str]
"""Repairs of one pass by result label."""


@dataclass(frozen=True, slots=True)
class SweepTimes:
    """One pass's clock and thresholds, in milliseconds."""

    started_ms: int
    grace_ms: int
    stuck_ms: int


def jittered(interval: float, rng: random.Random) -> float:
    return interval * rng.uniform(1 - JITTER, 1 + JITTER)


def grace_from_environment() -> float:
    """``SHELLGATE_SWEEP_GRACE_SECONDS`` when set to a number, else 300."""
    raw = os.environ.get(GRACE_ENV, "")
    try:
        return float(raw) if raw else DEFAULT_GRACE_SECONDS
    except ValueError:
        log.warning("%s=%r is not a number; using %.0f s", GRACE_ENV, raw, DEFAULT_GRACE_SECONDS)
        return DEFAULT_GRACE_SECONDS


# ---- the loop ---------------------------------------------------------------------------------


async def run_sweep_loop(
    gw: Gateway,
    interval_seconds: float,
    *,
    grace_seconds: float | None = None,
    stuck_seconds: float = DEFAULT_STUCK_SECONDS,
    rng: random.Random | None = None,
) -> None:
    """Sweep every ``interval_seconds`` (±20 %) until cancelled; 0 or less disables it."""
    if interval_seconds <= 0:
        log.info("sweep disabled (interval %s)", interval_seconds)
        return
    grace = grace_from_environment() if grace_seconds is None else grace_seconds
    rng = rng or random.Random()
    while True:
        await asyncio.sleep(jittered(interval_seconds, rng))
        try:
            await sweep_once(gw, grace_seconds=grace, stuck_seconds=stuck_seconds)
        except asyncio.CancelledError:
            raise
        except Exception:  # the next pass tries again; one bad pass must not end the loop
            log.exception("sweep pass failed")


async def sweep_once(
    gw: Gateway,
    *,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    stuck_seconds: float = DEFAULT_STUCK_SECONDS,
) -> Counts:
    """One pass (see the module docstring); returns the repairs made, by result."""
    started = time.perf_counter()
    times = SweepTimes(gw.clock_ms(), int(grace_seconds * 1000), int(stuck_seconds * 1000))
    counts: Counts = collections.Counter()
    try:
        backend = {s.sandbox_id: s for s in await gw.driver.list_sandboxes()}
        row_ids = await _sweep_rows(gw, backend, times, counts)
        for sandbox_id, snapshot in backend.items():
            if sandbox_id not in row_ids and _considered(gw, sandbox_id):
                await _count(counts, _remove_orphan(gw, sandbox_id, snapshot))
    except (StoreError, DriverError) as exc:
        log.warning("sweep pass stopped: %s", exc)
        counts["error"] += 1
    finally:
        for result, count in counts.items():
            gw.metrics.reconcile.labels(controller="sweep", result=result).inc(count)
        gw.metrics.reconcile_duration.labels(controller="sweep").observe(
            time.perf_counter() - started
        )
    if counts:
        log.info("sweep repaired: %s", dict(counts))
    return counts


def _considered(gw: Gateway, sandbox_id: str) -> bool:
    return not gw.driver.routes_by_owner or gw.driver.owns(sandbox_id)


async def _sweep_rows(
    gw: Gateway, backend: dict[str, DriverSnapshot], times: SweepTimes, counts: Counts
) -> set[str]:
    """Repair every row older than the listing; returns the ids of all rows seen."""
    seen: set[str] = set()
    token = ""
    while True:
        page = await gw.repos.sandboxes.list_records(
            workspace=None, limit=PAGE_SIZE, page_token=token
        )
        for record in page.records:
            seen.add(record.id)
            if record.updated_at_ms > times.started_ms or not _considered(gw, record.id):
                continue
            snapshot = backend.get(record.id)
            if snapshot is not None:
                await _count(counts, _repair_present(gw, record, snapshot, times))
            else:
                await _count(counts, _repair_missing(gw, record, times))
        token = page.next_page_token
        if not token:
            return seen


async def _count(counts: Counts, repair: Awaitable[str | None]) -> None:
    """Await one repair; a lost race is ``conflict``, a failure ``error``, None nothing."""
    try:
        result = await repair
    except Conflict:
        result = "conflict"
    except (StoreError, DriverError) as exc:
        log.warning("sweep repair failed: %s", exc)
        result = "error"
    except Exception:  # one bad row (an undecodable payload, ...) must not stop the pass
        log.exception("sweep repair failed unexpectedly")
        result = "error"
    if result is not None:
        counts[result] += 1


# ---- repairs ----------------------------------------------------------------------------------


async def _apply_bound(
    gw: Gateway, record: ObjectRecord, snapshot: DriverSnapshot
) -> tuple[bool, Sandbox | None]:
    """Apply a snapshot at exactly the version read: (changed, the row now; None if gone)."""
    mutation = sandbox_rules.apply_snapshot(snapshot, gw.clock_ms())
    try:
        outcome = await gw.store.update_message_cas(
            Sandbox, record.id, mutation, expected_version=record.resource_version
        )
    except NotFound:
        return False, None
    return outcome.written, outcome.message


async def _repair_present(
    gw: Gateway, record: ObjectRecord, snapshot: DriverSnapshot, times: SweepTimes
) -> str | None:
    """Resync from the listing; re-issue the driver call of a transition that is stuck.

    Stuck means the row has not been written for ``stuck`` seconds before this pass and is
    still STOPPING, STARTING or DELETING after the resync.
    """
    changed, current = await _apply_bound(gw, record, snapshot)
    if current is None:
        return None
    phase = current.status.phase
    if phase in _REISSUED and times.started_ms - record.updated_at_ms >= times.stuck_ms:
        await _reissue(gw, record.id, phase)
        return "reissued"
    return "resynced" if changed else None


async def _reissue(gw: Gateway, sandbox_id: str, phase: int) -> None:
    """Ask the driver again for what the row's phase says is under way (idempotent)."""
    log.info("sweep: sandbox %s is stuck in %s; asking the driver again", sandbox_id, phase)
    if phase == STOPPING:
        await gw.driver.stop_sandbox(sandbox_id)
    elif phase == STARTING:
        await gw.driver.start_sandbox(sandbox_id)
    else:
        await gw.driver.delete_sandbox(sandbox_id)


async def _repair_missing(gw: Gateway, record: ObjectRecord, times: SweepTimes) -> str | None:
    if times.started_ms - record.updated_at_ms < times.grace_ms:
        return None
    fresh = await gw.driver.get_sandbox(record.id)
    if fresh is not None:  # the listing was stale
        changed, _ = await _apply_bound(gw, record, fresh)
        return "resynced" if changed else None
    sandbox = decode(Sandbox, record)
    if sandbox.status.phase in MISSING_TO_ERROR:
        await gw.store.update_message_cas(
            Sandbox,
            record.id,
            mark_compute_missing(gw.clock_ms()),
            expected_version=record.resource_version,
        )
        log.warning("sweep: sandbox %s lost its compute resource; marked ERROR", record.id)
        return "marked_error"
    if is_marked_missing(sandbox):
        return None
    if not await gw.remove_sandbox_at(record.id, record.resource_version):
        return None
    log.info("sweep: sandbox %s removed; its compute resource is gone", record.id)
    return "removed"


async def _remove_orphan(gw: Gateway, sandbox_id: str, snapshot: DriverSnapshot) -> str | None:
    if snapshot.deleting:
        return None
    if await gw.repos.sandboxes.get_record(sandbox_id) is not None:
        return None  # the row exists after all (the listings are not one snapshot)
    if not await gw.driver.delete_sandbox(sandbox_id):
        return None
    log.info("sweep: deleted the compute resource of %s, which has no row", sandbox_id)
    return "orphan_deleted"
