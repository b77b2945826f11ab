"""Draft policy chunk rows: inserts, state-checked decisions, and version-bound clears.

Every decision on a chunk (approve, reject, undo, edit, and the settling of its effect) is a
CAS with a mutation the controller passes in that checks the state it reads: of two
decisions racing on one chunk, the second to write re-reads the first's result and refuses.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from shellgate.api import internal_pb2
from shellgate.store.base import Mutation, Store, decode
from shellgate.store.errors import Conflict, NotFound, UniqueViolation
from shellgate.store.messages import register_object_type
from shellgate.store.records import ObjectRecord, Page
from shellgate.store.repositories.hooks import Hook, no_hook
from shellgate.store.repositories.rows import delete_row, insert_scoped, scan_scope

StoredDraftChunk = internal_pb2.StoredDraftChunk
CHUNK_TYPE = "draft_policy_chunk"

register_object_type(StoredDraftChunk.DESCRIPTOR.full_name, CHUNK_TYPE)

StatusOf = Callable[[StoredDraftChunk], str]


@dataclass
class ChunkHooks:
    before_decision: Hook = no_hook
    """A decision (approve, reject, ...) read its chunk and is about to CAS it."""


class ChunkRepository:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.hooks = ChunkHooks()

    async def get(self, chunk_id: str) -> StoredDraftChunk | None:
        return await self.store.get_message(StoredDraftChunk, chunk_id)

    async def get_record(self, chunk_id: str) -> ObjectRecord | None:
        """The row itself: the draft loop needs its ``updated_at_ms``."""
        return await self.store.get(CHUNK_TYPE, chunk_id)

    async def list_records(self, **kwargs: Any) -> Page:
        """One page of chunk rows of every sandbox (``Store.list`` arguments)."""
        return await self.store.list(CHUNK_TYPE, **kwargs)

    async def of_sandbox(self, sandbox_id: str) -> list[StoredDraftChunk]:
        records = await scan_scope(self.store, CHUNK_TYPE, sandbox_id)
        return [decode(StoredDraftChunk, r) for r in records]

    async def insert(self, chunk: StoredDraftChunk, status: str) -> StoredDraftChunk:
        """``MUST_CREATE``; ``UniqueViolation`` when a chunk with its id exists (a repeated
        observation, which the caller folds into it)."""
        return await insert_scoped(
            self.store, CHUNK_TYPE, chunk, scope=chunk.sandbox_id, status=status
        )

    async def insert_or_fold(
        self,
        observation: Callable[[], tuple[StoredDraftChunk, Mutation[StoredDraftChunk]]],
        status_of: StatusOf,
    ) -> StoredDraftChunk:
        """Insert a chunk (``MUST_CREATE``); when its id is taken (the same observation made
        before), apply the fold mutation to the existing chunk instead. A chunk cleared
        between the refused insert and the fold is inserted again, like a lost CAS.
        ``observation`` builds the chunk and its fold afresh for every attempt."""

        async def attempt() -> StoredDraftChunk:
            chunk, fold = observation()
            try:
                return await self.insert(chunk, status_of(chunk))
            except UniqueViolation:
                pass
            return await self.decide(chunk.metadata.id, fold, status_of)

        return await self.store.retry_on_conflict(attempt, object_type=None, retriable=(NotFound,))

    async def decide(
        self, chunk_id: str, mutation: Mutation[StoredDraftChunk], status_of: StatusOf
    ) -> StoredDraftChunk:
        """One state-checked CAS on a chunk, its status column kept equal to the payload's."""
        await self.hooks.before_decision(chunk_id)
        outcome = await self.store.update_message_cas(
            StoredDraftChunk, chunk_id, mutation, status=status_of
        )
        return outcome.message

    async def delete_if_still(
        self, chunk: StoredDraftChunk, still: Callable[[StoredDraftChunk], bool]
    ) -> bool:
        """Delete ``chunk`` bound to the version read; after a concurrent change read it
        again and delete it at its new version only while ``still`` holds of it. False when
        it was kept, was gone, or every attempt lost."""
        current = chunk

        async def attempt() -> bool:
            nonlocal current
            version = current.metadata.resource_version
            try:
                deleted = await self.store.delete_if(CHUNK_TYPE, current.metadata.id, version)
            except Conflict:
                fresh = await self.get(current.metadata.id)
                if fresh is None or not still(fresh):
                    self.store.observer.cas_attempt(CHUNK_TYPE, "noop")
                    return False
                current = fresh
                raise
            self.store.observer.cas_attempt(CHUNK_TYPE, "written" if deleted else "noop")
            return deleted

        try:
            return await self.store.retry_on_conflict(attempt, object_type=CHUNK_TYPE)
        except Conflict:
            return False

    async def remove_owned(self, sandbox_id: str) -> int:
        """Remove a deleted sandbox's chunks, each bound to the version read."""
        removed = 0
        for record in await scan_scope(self.store, CHUNK_TYPE, sandbox_id):
            removed += await delete_row(self.store, record)
        return removed
