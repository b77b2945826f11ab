"""Policy revision rows: versions n+1 in a scope, arbitrated by the version index.

A new revision is an insert of version n+1 in its scope (a sandbox id, or the global scope).
The unique index ``objects_version_uq`` is the arbiter: when another writer took n+1 first,
the insert raises ``VersionTaken``, and ``commit`` reads the new latest revision, asks the
controller's plan for a candidate built on it again (re-applying merge operations, approvals,
re-validating) and inserts again, at most as many times as the store's retry policy allows,
then Conflict (ABORTED).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from shellgate.api import internal_pb2
from shellgate.store.base import Mutation, Store, decode
from shellgate.store.errors import NotFound, StoreError, UniqueViolation
from shellgate.store.messages import register_object_type
from shellgate.store.records import CasOutcome, ObjectRecord
from shellgate.store.repositories.errors import VersionTaken
from shellgate.store.repositories.hooks import Hook, no_hook
from shellgate.store.repositories.rows import SCAN_PAGE, delete_row, insert_scoped, scan_scope

log = logging.getLogger(__name__)

StoredPolicyRevision = internal_pb2.StoredPolicyRevision
REVISION_TYPE = "sandbox_policy"
VERSION_INDEX = "objects_version_uq"

register_object_type(StoredPolicyRevision.DESCRIPTOR.full_name, REVISION_TYPE)

StatusOf = Callable[[StoredPolicyRevision], str]
"""The status column of a revision, derived from its payload (so the two never disagree)."""

Plan = Callable[[StoredPolicyRevision | None], Awaitable[StoredPolicyRevision | None]]
"""Given the latest revision (None: there is none yet), the revision to insert as the next
version, or None when nothing is to be written. Run again on every attempt."""


@dataclass
class RevisionHooks:
    before_insert: Hook = no_hook
    """A commit built its candidate on the latest revision and is about to insert it."""


class RevisionRepository:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.hooks = RevisionHooks()

    async def latest(self, scope: str) -> StoredPolicyRevision | None:
        rows = await self.store.list_versions(REVISION_TYPE, scope, limit=1)
        return decode(StoredPolicyRevision, rows[0]) if rows else None

    async def at(self, scope: str, version: int) -> StoredPolicyRevision | None:
        record = await self.store.get_version(REVISION_TYPE, scope, version)
        return None if record is None else decode(StoredPolicyRevision, record)

    async def below(self, scope: str, below: int | None, limit: int) -> list[StoredPolicyRevision]:
        """Up to ``limit`` revisions of ``scope`` under version ``below`` (None: all), newest
        first."""
        rows = await self.store.list_versions(REVISION_TYPE, scope, below=below, limit=limit)
        return [decode(StoredPolicyRevision, row) for row in rows]

    async def insert_next_version(
        self, scope: str, revision: StoredPolicyRevision, status: str
    ) -> StoredPolicyRevision:
        """``MUST_CREATE`` ``revision`` at its version in ``scope``; ``VersionTaken`` when
        another writer holds that version already."""
        version = revision.revision.version
        try:
            return await insert_scoped(
                self.store, REVISION_TYPE, revision, scope=scope, status=status, version=version
            )
        except UniqueViolation as violation:
            if violation.constraint != VERSION_INDEX:
                raise
            raise VersionTaken(violation.constraint, violation.detail) from violation

    async def commit(
        self, scope: str, plan: Plan, status_of: StatusOf
    ) -> tuple[StoredPolicyRevision | None, bool]:
        """Insert what ``plan`` builds on the latest revision as the next version; returns
        (revision, inserted). When ``plan`` declines, returns the latest revision unwritten.
        A lost race (``VersionTaken``) reads and plans again; when every attempt lost,
        Conflict."""

        async def attempt() -> tuple[StoredPolicyRevision | None, bool]:
            latest = await self.latest(scope)
            candidate = await plan(latest)
            if candidate is None:
                self.store.observer.cas_attempt(REVISION_TYPE, "noop")
                return latest, False
            await self.hooks.before_insert(scope)
            await self.insert_next_version(scope, candidate, status_of(candidate))
            self.store.observer.cas_attempt(REVISION_TYPE, "written")
            return candidate, True

        return await self.store.retry_on_conflict(
            attempt, object_type=REVISION_TYPE, retriable=(VersionTaken,)
        )

    async def update(
        self, revision_id: str, mutation: Mutation[StoredPolicyRevision], status_of: StatusOf
    ) -> CasOutcome[StoredPolicyRevision]:
        """A state-checked change of one revision (its status column kept equal)."""
        return await self.store.update_message_cas(
            StoredPolicyRevision, revision_id, mutation, status=status_of
        )

    async def supersede_older(
        self,
        scope: str,
        below: int | None,
        statuses: Sequence[str],
        supersede: Mutation[StoredPolicyRevision],
        status_of: StatusOf,
    ) -> int:
        """Apply ``supersede`` to revisions of ``scope`` under ``below`` (all, when None)
        whose status is one of ``statuses``, each by CAS.

        Row by row and idempotent: a replica that stops half-way leaves work the next sweep
        (the next insert or LOADED report) finishes. Returns how many rows changed.
        """
        changed = 0
        while statuses:
            rows = await self.store.list_versions(
                REVISION_TYPE, scope, below=below, statuses=statuses, limit=SCAN_PAGE
            )
            for record in rows:
                changed += await self._supersede_one(record, supersede, status_of)
            if len(rows) < SCAN_PAGE:
                return changed
            below = rows[-1].version
        return changed

    async def _supersede_one(
        self,
        record: ObjectRecord,
        supersede: Mutation[StoredPolicyRevision],
        status_of: StatusOf,
    ) -> int:
        try:
            await self.update(record.id, supersede, status_of)
        except NotFound:
            return 0
        except StoreError as exc:  # another sweep will retire it
            log.warning("could not supersede policy revision %s: %s", record.id, exc)
            return 0
        return 1

    async def remove_owned(self, sandbox_id: str) -> int:
        """Remove a deleted sandbox's revisions, each bound to the version read."""
        removed = 0
        for record in await scan_scope(self.store, REVISION_TYPE, sandbox_id):
            removed += await delete_row(self.store, record)
        return removed
