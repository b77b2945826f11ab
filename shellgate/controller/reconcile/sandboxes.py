"""``reconcile(sandbox_id)``: the only path that repairs a sandbox row or its driver object.

Three sources only enqueue sandbox ids on one bounded, coalescing ``WorkQueue``:

- **driver events** (``observe``, a synchronous callback the driver calls for every event):
  the latest snapshot (or deletion) per id is kept for the next reconcile of that id; an
  older one still waiting is superseded, since snapshots are states, not deltas. Platform
  events (human-readable) go to the in-memory bus for WatchSandbox and are not queued.
- **the store's change feed** (``follow_changes``): a sandbox hint enqueues its id, a wildcard
  hint every id the store knows. An owner replica of a local-driver sandbox learns of a stop,
  start or delete another replica recorded this way.
- **the periodic resync** (``resync``): every id the driver lists (with the listed snapshot)
  and every id the store holds (the driver is asked about that one sandbox when it is
  reconciled), so drift is repaired and anything a watch missed is caught up. A pass is
  *incremental*: it pages through the rows in index order, decides each from the page it
  already read, and enqueues only the rows that need work; a row found quiet is remembered,
  and later passes skip it without decoding while nothing it was decided from has changed.
  See ``resync`` for why that is the same decision ``reconcile`` would make.

``reconcile`` reads the row, takes the driver's view, asks ``reconcilers.sandbox_sync.decide``
for one action, and carries it out with a write bound to the version read
(``update_message_cas(..., expected_version=rv)`` or ``delete_if(id, rv)``). A write refused
because the row moved on is a ``conflict``: a watch event is kept and retried with backoff
(it decides again from the newer row), a resync's view is dropped (the next resync looks
again). Driver calls are idempotent, so repeating one is harmless.

Results are counted in ``shellgate_reconcile_total{controller="sandbox", result=...}``;
every watch event consumed also in ``shellgate_driver_events_total{driver, result}`` with
``applied``, ``stale``, ``noop``, ``superseded`` (replaced by a newer event before it was
reconciled) or ``error``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
from collections.abc import AsyncIterator

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.base import (
    DriverError,
    DriverEvent,
    PlatformEvent,
    SnapshotEvent,
)
from shellgate.controller.gateway import Gateway
from shellgate.controller.reconcile.liveness import OwnerLiveness
from shellgate.controller.reconcile.queue import DEFAULT_MAX_WAITING, WorkQueue
from shellgate.reconcilers.ownership import owner_of
from shellgate.reconcilers.sandbox_sync import (
    Absent,
    Action,
    CallDriver,
    Deleted,
    DeleteOrphan,
    Nothing,
    Remove,
    Reported,
    Row,
    Thresholds,
    View,
    Write,
    decide,
    stays_quiet,
)
from shellgate.reconcilers.snapshot import DriverSnapshot
from shellgate.store import Conflict, NotFound, StoreError, decode
from shellgate.store.records import ChangeEvent, ObjectRecord
from shellgate.store.repositories import SANDBOX_TYPE

log = logging.getLogger(__name__)

Sandbox = openshell_pb2.Sandbox
CONTROLLER = "sandbox"
PAGE_SIZE = 500
DEFAULT_GRACE_SECONDS = 300.0
GRACE_ENV = "SHELLGATE_SWEEP_GRACE_SECONDS"
DEFAULT_STUCK_SECONDS = 60.0
JITTER = 0.2
YIELD_EVERY = 50
"""Rows a resync pass decides between two turns of the event loop (about 1-2 ms of CPU): a
page of 500 at once held every RPC for tens of ms (measured: GetSandbox p50 32 ms on
Postgres during a 100k-row first pass)."""
FULL_PASS_EVERY = 10
"""Every this many resync passes forgets what earlier passes found quiet (see ``resync``)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Look:
    """The resync wants this id checked against the driver (asked when reconciled)."""


Observation = Reported | Deleted | Look
"""What a source left for the next reconcile of an id."""


@dataclasses.dataclass(frozen=True, slots=True)
class Quiet:
    """What a resync found a row needing nothing from, at any time (``sandbox_sync.quiet``).

    The row may be skipped without decoding while all of these still hold: its version (any
    write moves it), the driver's listed snapshot of it (None: not listed), and ownership
    (``owner`` as the row names it, ``mine`` as this replica judged it).
    """

    version: int
    listed: DriverSnapshot | None
    owner: str | None
    mine: bool


def still_quiet(
    seen: Quiet | None, version: int, listed: DriverSnapshot | None, mine: bool
) -> bool:
    """Whether a row found quiet earlier may be skipped now (see ``Quiet``)."""
    return (
        seen is not None and seen.version == version and seen.listed == listed and seen.mine == mine
    )


@dataclasses.dataclass
class PassCounts:
    """One resync pass over the stored rows, for logs and tests."""

    unchanged: int = 0
    """Skipped without decoding: quiet when last seen, and nothing it depends on moved."""
    settled: int = 0
    """Decoded and decided: nothing to do."""
    queued: int = 0
    """Enqueued for ``reconcile``."""


class Retry(Exception):
    """Reconcile did not finish; the queue re-adds the key with backoff."""


def jittered(interval: float, rng: random.Random) -> float:
    """``interval`` ±20 %, so replicas started together do not resync in lockstep."""
    return interval * rng.uniform(1 - JITTER, 1 + JITTER)


def grace_from_environment() -> float:
    """``SHELLGATE_SWEEP_GRACE_SECONDS`` when set to a number, else 300."""
    raw = os.environ.get(GRACE_ENV, "")
    try:
        return float(raw) if raw else DEFAULT_GRACE_SECONDS
    except ValueError:
        log.warning("%s=%r is not a number; using %.0f s", GRACE_ENV, raw, DEFAULT_GRACE_SECONDS)
        return DEFAULT_GRACE_SECONDS


async def write_at(gw: Gateway, sandbox_id: str, candidate: Sandbox, version: int) -> bool:
    """Store ``candidate`` only if the row is still at ``version``; True when written.

    The candidate was decided from the row read at ``version``; writing it over any newer row
    would undo a write someone else already acknowledged (a DeleteSandbox, say).
    """
    outcome = await gw.repos.sandboxes.update(
        sandbox_id, lambda _current: candidate, expected_version=version
    )
    return outcome.written


class SandboxReconciler:
    """The sandbox work queue, its sources, and ``reconcile`` (see the module docstring)."""

    def __init__(
        self,
        gw: Gateway,
        *,
        grace_seconds: float | None = None,
        stuck_seconds: float = DEFAULT_STUCK_SECONDS,
        max_waiting: int = DEFAULT_MAX_WAITING,
        liveness: OwnerLiveness | None = None,
        provisioning_deadline_seconds: float = 0.0,
    ) -> None:
        self.gw = gw
        self.liveness = liveness
        grace = grace_from_environment() if grace_seconds is None else grace_seconds
        self.thresholds = Thresholds(
            int(grace * 1000), int(stuck_seconds * 1000), int(provisioning_deadline_seconds * 1000)
        )
        self.queue: WorkQueue[str] = WorkQueue(
            CONTROLLER, max_waiting=max_waiting, metrics=gw.metrics
        )
        self._pending: dict[str, Observation] = {}
        self._quiet: dict[str, Quiet] = {}
        self._passes = 0
        self.full_pass_every = FULL_PASS_EVERY
        self.last_pass = PassCounts()

    # ---- sources ---------------------------------------------------------------------------

    def observe(self, event: DriverEvent) -> None:
        """A driver event: keep the latest per id and enqueue the id (never blocks)."""
        if isinstance(event, PlatformEvent):
            self.gw.events.publish(event)
            self._count_event("applied")
            return
        seen: Observation
        if isinstance(event, SnapshotEvent):
            sandbox_id, seen = event.snapshot.sandbox_id, Reported(event.snapshot)
        else:
            sandbox_id, seen = event.sandbox_id, Deleted()
        self._leave(sandbox_id, seen, from_event=True)

    async def resync(self) -> int:
        """One pass: the driver's listing, then every stored row, page by page in index order;
        only rows that need work are enqueued. Returns how many ids the pass looked at.

        Each row is decided from the page just read, with the inputs ``reconcile`` would use
        (the listed snapshot for a row the driver lists, no view of our own for a row another
        replica owns, that owner's liveness), by the same ``decide``. Nothing to do: the row
        is not enqueued. Deciding from the page rather than a fresh read loses nothing: the
        change feed was subscribed before the pass, so a row written after its page was read
        is enqueued by its hint. A row this replica owns and the driver did not list is
        enqueued as before, since only asking the driver about it can tell (the Kubernetes
        listing leaves out objects without this installation's label, which ``get_sandbox``
        still finds; the listing may predate the row). An id the queue already holds with a
        source's observation is left to it.

        A row found quiet (``sandbox_sync.quiet``: nothing now or ever, while its inputs stay
        the same) is remembered, and the next passes skip it without decoding while its
        version, its listed snapshot and its ownership are unchanged and its owner, if
        another replica, is alive. Every ``full_pass_every``-th pass forgets them all and
        decides every row again: a safety net should a future input of ``decide`` be missing
        from ``Quiet``.

        The pass yields to the event loop every ``YIELD_EVERY`` rows, so RPCs are served
        meanwhile.
        """
        self._passes += 1
        if self.full_pass_every > 0 and self._passes % self.full_pass_every == 0:
            self._quiet.clear()
        listed_at = self.gw.clock_ms()
        listing = {
            snapshot.sandbox_id: snapshot for snapshot in await self.gw.driver.list_sandboxes()
        }
        counts = PassCounts()
        lost: dict[str, bool] = {}
        stored: set[str] = set()
        token = ""
        while True:
            page = await self.gw.repos.sandboxes.list_records(
                workspace=None, limit=PAGE_SIZE, page_token=token
            )
            for n, record in enumerate(page.records, 1):
                stored.add(record.id)
                await self._triage(record, listing.get(record.id), listed_at, lost, counts)
                if n % YIELD_EVERY == 0:
                    await asyncio.sleep(0)  # RPCs and other loops run in between
            await self.after_page(counts)
            await asyncio.sleep(0)
            token = page.next_page_token
            if not token:
                break
        for sandbox_id, snapshot in listing.items():
            if sandbox_id not in stored:  # no row (yet): reconcile reads it again and decides
                view = Reported(snapshot, resync=True, listed_at_ms=listed_at)
                await self._leave_waiting(sandbox_id, view)
                counts.queued += 1
        for gone in self._quiet.keys() - stored:
            del self._quiet[gone]
        self.last_pass = counts
        self._count_pass(counts)
        return len(stored | listing.keys())

    async def after_page(self, counts: PassCounts) -> None:
        """Called after each page of a resync pass (a seam for tests; does nothing)."""

    async def _triage(
        self,
        record: ObjectRecord,
        listed: DriverSnapshot | None,
        listed_at: int,
        lost: dict[str, bool],
        counts: PassCounts,
    ) -> None:
        """Decide one stored row from the page read; enqueue it only when there is work."""
        sandbox_id = record.id
        if sandbox_id in self._pending:
            counts.queued += 1  # already queued with what a source saw: reconcile decides
            return
        seen = self._quiet.get(sandbox_id)
        if seen is not None:
            mine = self.gw.owns_by(sandbox_id, seen.owner)
            if still_quiet(seen, record.resource_version, listed, mine) and not (
                not mine and await self._lost(seen.owner, lost)
            ):
                counts.unchanged += 1
                return
        self._quiet.pop(sandbox_id, None)
        row = Row(decode(Sandbox, record), record.resource_version, record.updated_at_ms)
        owner = owner_of(row.sandbox)
        mine = self.gw.owns_by(sandbox_id, owner)
        view: Reported | None = None  # another replica's row: no view of our own, as in reconcile
        if mine:
            if listed is None:
                await self._leave_waiting(sandbox_id, Look())  # only the driver can say
                counts.queued += 1
                return
            view = Reported(listed, resync=True, listed_at_ms=listed_at)
        owner_lost = not mine and await self._lost(owner, lost)
        now = self.gw.clock_ms()
        acts = self.gw.driver.routes_by_owner and mine
        action = decide(row, view, now, self.thresholds, acts_on_intent=acts, owner_lost=owner_lost)
        if not isinstance(action, Nothing):
            await self._leave_waiting(sandbox_id, view if view is not None else Look())
            counts.queued += 1
            return
        counts.settled += 1
        if not owner_lost and stays_quiet(row, view, now, self.thresholds, acts_on_intent=acts):
            self._quiet[sandbox_id] = Quiet(row.version, listed, owner, mine)

    async def _lost(self, owner: str | None, lost: dict[str, bool]) -> bool:
        """Whether ``owner`` (another replica) has stopped beating; asked once per pass."""
        if self.liveness is None or owner is None:
            return False
        if owner not in lost:
            lost[owner] = await self.liveness.is_lost(owner)
        return lost[owner]

    def _count_pass(self, counts: PassCounts) -> None:
        rows = self.gw.metrics.resync_rows
        for outcome, value in dataclasses.asdict(counts).items():
            if value:
                rows.labels(controller=CONTROLLER, outcome=outcome).inc(value)
        log.debug(
            "resync pass: %d rows unchanged, %d settled, %d queued",
            counts.unchanged,
            counts.settled,
            counts.queued,
        )

    async def hint(self, change: ChangeEvent) -> None:
        """A change-feed hint: the row changed (or, wildcard, anything may have)."""
        if change.object_type not in (None, SANDBOX_TYPE):
            return
        if change.id is not None:
            await self.queue.add(change.id)
            return
        async for sandbox_id in self._stored_ids():
            await self.queue.add(sandbox_id)

    async def _stored_ids(self) -> AsyncIterator[str]:
        token = ""
        while True:
            page = await self.gw.repos.sandboxes.list_records(
                workspace=None, limit=PAGE_SIZE, page_token=token
            )
            for record in page.records:
                yield record.id
            token = page.next_page_token
            if not token:
                return

    def _leave(self, sandbox_id: str, seen: Observation, *, from_event: bool) -> None:
        if not self.queue.offer(sandbox_id):
            if from_event:
                self._count_event("error")  # dropped: the queue is full; resync repairs it
            return
        self._supersede(sandbox_id, seen)

    async def _leave_waiting(self, sandbox_id: str, seen: Observation) -> None:
        await self.queue.add(sandbox_id)
        self._supersede(sandbox_id, seen)

    def _supersede(self, sandbox_id: str, seen: Observation) -> None:
        """Keep the newest observation; a watch event is never replaced by a mere look."""
        self._quiet.pop(sandbox_id, None)  # a source saw something: decide it afresh
        previous = self._pending.get(sandbox_id)
        if isinstance(seen, Look) and previous is not None:
            return
        if _from_event(previous):
            self._count_event("superseded")
        self._pending[sandbox_id] = seen

    # ---- reconcile -------------------------------------------------------------------------

    async def handle(self, sandbox_id: str) -> None:
        """The queue's handler: reconcile, count, and ask for a retry when needed."""
        result = await self.gw.metrics.reconciled(CONTROLLER, self.reconcile(sandbox_id))
        if result == "error" or (result == "conflict" and sandbox_id in self._pending):
            raise Retry(sandbox_id)

    async def reconcile(self, sandbox_id: str) -> str:
        """Read, decide once, act once; returns the result label (see the module docstring)."""
        seen = self._pending.get(sandbox_id)
        try:
            result = await self._reconcile(sandbox_id, seen)
        except Conflict:
            result = "conflict"
        except (StoreError, DriverError) as exc:
            log.warning("reconcile of sandbox %s failed: %s", sandbox_id, exc)
            result = "error"
        except Exception:  # one bad row must not stop the workers; counted and retried
            log.exception("reconcile of sandbox %s failed unexpectedly", sandbox_id)
            result = "error"
        keep = result == "error" or (result == "conflict" and _from_event(seen))
        if not keep and self._pending.get(sandbox_id) is seen:
            self._pending.pop(sandbox_id, None)
        if _from_event(seen) and (not keep or result == "error"):
            self._count_event(_event_result(result))
        return result

    async def _reconcile(self, sandbox_id: str, seen: Observation | None) -> str:
        record = await self.gw.repos.sandboxes.get_record(sandbox_id)
        row = None
        if record is not None:
            row = Row(decode(Sandbox, record), record.resource_version, record.updated_at_ms)
        driver = self.gw.driver
        mine = self.gw.owns(sandbox_id, row.sandbox if row is not None else None)
        view = await self._view(sandbox_id, seen) if mine else _event_only(seen)
        action = decide(
            row,
            view,
            self.gw.clock_ms(),
            self.thresholds,
            acts_on_intent=driver.routes_by_owner and mine,
            owner_lost=not mine and await self._owner_lost(row, seen),
        )
        return await self._act(sandbox_id, row, action)

    async def _owner_lost(self, row: Row | None, seen: Observation | None) -> bool:
        """Whether another replica that owns the row has stopped beating; asked only on a
        resync's look, so a burst of change-feed hints costs no heartbeat reads."""
        owner = owner_of(row.sandbox) if row is not None else None
        if self.liveness is None or owner is None or not isinstance(seen, Look):
            return False
        return await self.liveness.is_lost(owner)

    async def _view(self, sandbox_id: str, seen: Observation | None) -> View:
        if isinstance(seen, Look):
            fresh = await self.gw.driver.get_sandbox(sandbox_id)
            return Absent() if fresh is None else Reported(fresh, resync=True)
        return seen

    async def _act(self, sandbox_id: str, row: Row | None, action: Action) -> str:
        if isinstance(action, Nothing):
            return action.result
        if isinstance(action, DeleteOrphan):
            return await self._delete_orphan(sandbox_id)
        assert row is not None  # every other action is about an existing row
        if isinstance(action, Write):
            try:
                written = await write_at(self.gw, sandbox_id, action.candidate, row.version)
            except NotFound:
                return "noop"
            if action.result == "marked_error" and written:
                log.warning("sandbox %s lost its compute resource; marked ERROR", sandbox_id)
            if action.result == "deadline_exceeded" and written:
                log.warning("sandbox %s did not come up within its deadline; ERROR", sandbox_id)
            if action.result == "owner_lost" and written:
                log.warning(
                    "sandbox %s: its owner replica %s stopped reporting; marked UNKNOWN",
                    sandbox_id,
                    owner_of(row.sandbox),
                )
            if written and action.then is not None:
                return await self._call_driver(sandbox_id, action.then)
            return action.result if written else "noop"
        if isinstance(action, Remove):
            return await self._remove(sandbox_id, row, action)
        return await self._call_driver(sandbox_id, action)

    async def _remove(self, sandbox_id: str, row: Row, action: Remove) -> str:
        if not await self.gw.remove_sandbox_at(sandbox_id, row.version):
            # Not at the version read: someone wrote it meanwhile (decide again) or removed it.
            gone = await self.gw.repos.sandboxes.get_record(sandbox_id) is None
            return "noop" if gone else "conflict"
        log.info("sandbox %s removed: its compute resources are gone", sandbox_id)
        return action.result

    async def _call_driver(self, sandbox_id: str, action: CallDriver) -> str:
        log.info("sandbox %s: asking the driver to %s (%s)", sandbox_id, action.verb, action.result)
        if action.verb == "stop":
            await self.gw.driver.stop_sandbox(sandbox_id)
        elif action.verb == "start":
            await self.gw.driver.start_sandbox(sandbox_id)
        else:
            await self.gw.driver.delete_sandbox(sandbox_id)
        return action.result

    async def _delete_orphan(self, sandbox_id: str) -> str:
        if not await self.gw.driver.delete_sandbox(sandbox_id):
            return "noop"
        log.info("deleted the compute resource of %s, which has no row", sandbox_id)
        return "orphan_deleted"

    def _count_event(self, result: str) -> None:
        self.gw.metrics.driver_events.labels(driver=self.gw.driver.name, result=result).inc()

    # ---- loops -----------------------------------------------------------------------------

    async def run(self, *, workers: int = 2) -> None:
        await self.queue.run(self.handle, workers=workers)

    async def resync_forever(self, interval_seconds: float, rng: random.Random) -> None:
        """Resync now, then every ``interval_seconds`` ±20 % (0 or less: only now)."""
        while True:
            try:
                await self.resync()
            except asyncio.CancelledError:
                raise
            except (StoreError, DriverError) as exc:
                log.warning("resync stopped: %s", exc)
                self.gw.metrics.reconcile.labels(controller=CONTROLLER, result="error").inc()
            except Exception:  # the next pass tries again
                log.exception("resync failed")
                self.gw.metrics.reconcile.labels(controller=CONTROLLER, result="error").inc()
            if interval_seconds <= 0:
                return
            await asyncio.sleep(jittered(interval_seconds, rng))


def _from_event(seen: Observation | None) -> bool:
    return isinstance(seen, Deleted) or (isinstance(seen, Reported) and not seen.resync)


def _event_only(seen: Observation | None) -> View:
    """Another replica owns the sandbox: apply what its own events say, repair nothing."""
    return seen if _from_event(seen) else None  # type: ignore[return-value]


def _event_result(result: str) -> str:
    """A reconcile's result as the outcome of the watch event it consumed."""
    if result in ("applied", "stale", "error"):
        return result
    return "noop"
