"""``reconcile(chunk_id)``: finish a draft-chunk decision whose policy effect is still owed.

An approve or undo writes the chunk (recording the ``effect`` the policy owes), then a policy
revision, then clears the effect. The handler that decided does all three before answering;
if its replica dies in between, the chunk keeps its effect. This loop finishes such a
decision on any replica, so no read has to (reads never write).

Keys are chunk ids, fed by the change feed (``draft_policy_chunk`` hints; a wildcard enqueues
every chunk that owes an effect) and by the periodic resync (the same scan). A chunk written
less than ``settle_after`` seconds ago is looked at again once that time has passed: its own
handler is most likely still finishing it, and doing the same work twice would only cost a
lost insert race. The steps are idempotent by content (``draft_effects``), so a loop and a
handler that do meet still make one change. A failed attempt is retried with backoff.
"""

from __future__ import annotations

import logging

from shellgate.api import openshell_pb2
from shellgate.controller.draft_effects import apply_effects
from shellgate.controller.gateway import Gateway
from shellgate.controller.reconcile.queue import DEFAULT_MAX_WAITING, WorkQueue
from shellgate.reconcilers import drafts as rules
from shellgate.reconcilers.errors import DomainError
from shellgate.store import StoreError, decode
from shellgate.store.records import ChangeEvent
from shellgate.store.repositories import CHUNK_TYPE, StoredDraftChunk

log = logging.getLogger(__name__)

CONTROLLER = "draft"
PAGE_SIZE = 500
DEFAULT_SETTLE_AFTER_SECONDS = 5.0
DELETING = openshell_pb2.SANDBOX_PHASE_DELETING


class DraftReconciler:
    """The draft-chunk work queue, its sources and ``reconcile``."""

    def __init__(
        self,
        gw: Gateway,
        *,
        settle_after_seconds: float = DEFAULT_SETTLE_AFTER_SECONDS,
        max_waiting: int = DEFAULT_MAX_WAITING,
    ) -> None:
        self.gw = gw
        self.settle_after_ms = int(settle_after_seconds * 1000)
        self.queue: WorkQueue[str] = WorkQueue(
            CONTROLLER, max_waiting=max_waiting, metrics=gw.metrics
        )

    async def hint(self, change: ChangeEvent) -> None:
        if change.object_type == CHUNK_TYPE and change.id is not None and not change.deleted:
            await self.queue.add(change.id)
        elif change.object_type is None:
            await self.resync()

    async def resync(self) -> int:
        """Enqueue every chunk that still owes a policy effect; returns how many."""
        owing = 0
        token = ""
        while True:
            page = await self.gw.repos.chunks.list_records(
                workspace=None, limit=PAGE_SIZE, page_token=token
            )
            for record in page.records:
                if decode(StoredDraftChunk, record).effect != rules.EFFECT_NONE:
                    owing += 1
                    await self.queue.add(record.id)
            token = page.next_page_token
            if not token:
                return owing

    async def handle(self, chunk_id: str) -> None:
        result = await self.gw.metrics.reconciled(CONTROLLER, self.reconcile(chunk_id))
        if result == "error":
            raise RuntimeError(f"draft chunk {chunk_id} not settled")

    async def reconcile(self, chunk_id: str) -> str:
        """``settled`` when an owed effect was finished, ``withdrawn`` when it could no longer
        be (the approval was taken back), ``deferred``, ``noop`` or ``error``."""
        try:
            return await self._reconcile(chunk_id)
        except DomainError as exc:
            log.info("draft chunk %s: decision withdrawn: %s", chunk_id, exc)
            return "withdrawn"
        except StoreError as exc:
            log.warning("draft chunk %s: could not finish its decision: %s", chunk_id, exc)
            return "error"

    async def _reconcile(self, chunk_id: str) -> str:
        record = await self.gw.repos.chunks.get_record(chunk_id)
        if record is None:
            return "noop"
        stored = decode(StoredDraftChunk, record)
        if stored.effect == rules.EFFECT_NONE:
            return "noop"
        wait_ms = record.updated_at_ms + self.settle_after_ms - self.gw.clock_ms()
        if wait_ms > 0:
            self.queue.add_after(chunk_id, wait_ms / 1000)
            return "deferred"
        sandbox = await self.gw.repos.sandboxes.get(stored.sandbox_id)
        if sandbox is None or sandbox.status.phase == DELETING:
            return "noop"  # its rows are being removed; a revision now would be left behind
        await apply_effects(self.gw, sandbox, [stored])
        log.info("draft chunk %s: finished a decision left half-done", chunk_id)
        return "settled"

    async def run(self, *, workers: int = 1) -> None:
        await self.queue.run(self.handle, workers=workers)
