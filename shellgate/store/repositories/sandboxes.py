"""Sandbox rows: reads, CAS updates, the attach protocol and the cascade removal.

**Attach** (``attach``): write the sandbox by CAS with the controller's attach mutation,
*then* fence the provider (``ProviderRepository.fence``). If the fence fails for any reason
(the provider is gone, the store is down, every attempt lost, cancellation), the reference is
taken back out with the detach mutation before the error propagates, so an error means
nothing was attached. Why the fence comes after the write is in ``providers``.

**Removal** (``remove_at`` / ``remove``): a sandbox row goes away with ``delete_if`` bound to
a version, and the writer that wins also removes what the sandbox owned: its settings, policy
revisions and draft chunks, each version-bound too. A loser (Conflict) leaves the work to
whoever holds the newer version. Safe on several replicas at once and to repeat.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shellgate.api import openshell_pb2
from shellgate.store.base import Mutation, Store, decode
from shellgate.store.errors import Conflict, NotFound, StoreError
from shellgate.store.messages import register_object_type
from shellgate.store.records import CasOutcome, ObjectRecord, Page, WriteCondition
from shellgate.store.repositories.hooks import Hook, no_hook
from shellgate.store.repositories.providers import ProviderRepository
from shellgate.store.repositories.templates import TemplateRepository

log = logging.getLogger(__name__)

Sandbox = openshell_pb2.Sandbox
SANDBOX_TYPE = "sandbox"


def phase_word(sandbox: Sandbox) -> str:
    """The status column of a sandbox row: its phase, as the metrics label spells it."""
    return (
        openshell_pb2.SandboxPhase.Name(sandbox.status.phase).removeprefix("SANDBOX_PHASE_").lower()
    )


register_object_type(Sandbox.DESCRIPTOR.full_name, SANDBOX_TYPE)


class OwnedRows(Protocol):
    """A repository of rows a sandbox owns, removed with it."""

    async def remove_owned(self, sandbox_id: str) -> int: ...


@dataclass
class SandboxHooks:
    before_reference_write: Hook = no_hook
    """An attach checked its provider exists and is about to write the sandbox."""
    before_fence: Hook = no_hook
    """A sandbox now references a provider (attach or create) that is not fenced yet."""
    before_create_write: Hook = no_hook
    """A create checked what the sandbox names (providers, template) and inserts next."""
    before_template_fence: Hook = no_hook
    """A sandbox built from a template is written; the template is not fenced yet."""


class SandboxRepository:
    object_type = SANDBOX_TYPE

    def __init__(
        self,
        store: Store,
        providers: ProviderRepository,
        owned: Sequence[OwnedRows] = (),
        templates: TemplateRepository | None = None,
    ) -> None:
        self.store = store
        self.providers = providers
        self.owned = list(owned)
        self.templates = templates or TemplateRepository(store)
        self.hooks = SandboxHooks()

    # ----- reads ------------------------------------------------------------------------

    async def get(self, sandbox_id: str) -> Sandbox | None:
        return await self.store.get_message(Sandbox, sandbox_id)

    async def get_record(self, sandbox_id: str) -> ObjectRecord | None:
        return await self.store.get(SANDBOX_TYPE, sandbox_id)

    async def find(self, name: str, workspace: str) -> Sandbox | None:
        return await self.store.get_message_by_name(Sandbox, name, workspace)

    async def list_page(self, **kwargs: Any) -> tuple[Sequence[Sandbox], str]:
        return await self.store.list_messages(Sandbox, **kwargs)

    async def list_records(self, **kwargs: Any) -> Page:
        return await self.store.list(SANDBOX_TYPE, **kwargs)

    # ----- writes -----------------------------------------------------------------------

    async def create(self, candidate: Sandbox) -> Sandbox:
        await self.hooks.before_create_write(candidate.metadata.id)
        return await self.store.create_message(candidate, status=phase_word(candidate))

    async def update(
        self, sandbox_id: str, mutation: Mutation[Sandbox], expected_version: int = 0
    ) -> CasOutcome[Sandbox]:
        """Every write keeps the status column equal to the phase (``phase_counts``)."""
        return await self.store.update_message_cas(
            Sandbox, sandbox_id, mutation, expected_version, status=phase_word
        )

    # ----- the per-phase count (metrics) ------------------------------------------------

    async def phase_counts(self) -> dict[str, int]:
        """Sandboxes per phase word, from the status column: one aggregate query. Rows written
        before the column was kept count as "unknown" until ``fill_phase_column`` runs."""
        counts: dict[str, int] = {}
        for phase, count in (await self.store.count_by_status(SANDBOX_TYPE)).items():
            word = phase or "unknown"  # unfilled rows join the real UNKNOWN phase's count
            counts[word] = counts.get(word, 0) + count
        return counts

    async def fill_phase_column(self) -> int:
        """Give rows written before the status column held the phase their phase, each by a
        version-bound write of the same payload (a row that changed meanwhile got it from
        its writer). Does nothing, beyond one aggregate query, once every row has it."""
        if None not in await self.store.count_by_status(SANDBOX_TYPE):
            return 0
        filled = 0
        token = ""
        while True:
            page = await self.list_records(workspace=None, limit=500, page_token=token)
            for record in page.records:
                if record.status is None:
                    filled += await self._fill_phase(record)
            token = page.next_page_token
            if not token:
                return filled

    async def _fill_phase(self, record: ObjectRecord) -> int:
        try:
            await self.store.put_if(
                SANDBOX_TYPE,
                record.id,
                record.name,
                record.payload,
                None,
                WriteCondition.match(record.resource_version),
                record.workspace,
                status=phase_word(decode(Sandbox, record)),
            )
        except (Conflict, NotFound):
            return 0
        return 1

    async def fence_providers(self, sandbox_id: str, names: Sequence[str], workspace: str) -> None:
        """Fence every provider a freshly written sandbox references (see ``providers``)."""
        await self.hooks.before_fence(sandbox_id)
        for name in names:
            await self.providers.fence(name, workspace)

    async def fence_template(self, sandbox_id: str, name: str, workspace: str) -> None:
        """Fence the template a freshly written sandbox was built from (see ``templates``)."""
        await self.hooks.before_template_fence(sandbox_id)
        await self.templates.fence(name, workspace)

    async def attach(
        self,
        sandbox_id: str,
        provider: str,
        workspace: str,
        attach: Mutation[Sandbox],
        detach: Mutation[Sandbox],
        expected_version: int = 0,
    ) -> CasOutcome[Sandbox]:
        """Write the reference by CAS, then fence the provider; undo the write if the fence
        fails. ``ProviderMissing`` when the provider went away before its fence."""
        await self.hooks.before_reference_write(sandbox_id)
        outcome = await self.update(sandbox_id, attach, expected_version)
        if outcome.written:
            try:
                await self.fence_providers(sandbox_id, [provider], workspace)
            except BaseException:
                await asyncio.shield(self._undo(sandbox_id, provider, detach))
                raise
        return outcome

    async def _undo(self, sandbox_id: str, provider: str, detach: Mutation[Sandbox]) -> None:
        try:
            await self.update(sandbox_id, detach)
        except StoreError as exc:  # the sandbox went away, or the store did
            log.error(
                "could not undo the attach of %s to sandbox %s: %s", provider, sandbox_id, exc
            )

    async def remove_at(self, sandbox_id: str, version: int) -> bool:
        """Delete the row at ``version`` and the rows it owned; False if it was not ours to
        do (another version, or already gone)."""
        try:
            removed = await self.store.delete_if(SANDBOX_TYPE, sandbox_id, version)
        except Conflict:
            return False
        if removed:
            await self._remove_owned(sandbox_id)
        return removed

    async def remove(self, sandbox_id: str) -> bool | None:
        """Remove the row at whatever version it has now, re-reading after a lost race.

        True when this call removed it, False when it was already gone, None when every
        attempt lost to a concurrent writer (the sweep finishes the job).
        """

        async def attempt() -> bool:
            record = await self.get_record(sandbox_id)
            if record is None:
                self.store.observer.cas_attempt(SANDBOX_TYPE, "noop")
                return False
            if not await self.remove_at(sandbox_id, record.resource_version):
                raise Conflict(None)  # changed or removed since the read: read again
            self.store.observer.cas_attempt(SANDBOX_TYPE, "written")
            return True

        try:
            return await self.store.retry_on_conflict(attempt, object_type=SANDBOX_TYPE)
        except Conflict:
            return None

    async def _remove_owned(self, sandbox_id: str) -> None:
        removed = 0
        for rows in self.owned:
            removed += await rows.remove_owned(sandbox_id)
        if removed:
            log.info("removed %d configuration rows of sandbox %s", removed, sandbox_id)
