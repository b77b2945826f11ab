"""Service endpoint rows: one per exposed service, named by its routing key, scoped to the
sandbox that owns it (the scope column holds the sandbox id), removed with that sandbox by
the sandbox repository's cascade.

**Expose** (``expose``) is create-or-update with a named condition on every write: read the
row by name; none there → ``MUST_CREATE``; there → ``update_message_cas`` at the version read.
A lost create (``UniqueViolation``) or a lost update (``Conflict``) reads again. A row that
names another sandbox (one removed before its cascade reached the row) is deleted at its
version first.

**No orphan after a sandbox's removal.** The removal path deletes the sandbox row and *then*
scans its scope; ExposeService writes its row and *then* reads the sandbox again
(``check_owner``). If that read still finds the sandbox live, the removal's scan comes later
and finds the row; if not, the endpoint removes its own row and the call fails.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from shellgate.api import openshell_pb2
from shellgate.store.base import Mutation, Store, encode_for_storage
from shellgate.store.errors import Conflict, UniqueViolation
from shellgate.store.messages import register_object_type
from shellgate.store.records import DEFAULT_WORKSPACE, WriteCondition
from shellgate.store.repositories.hooks import Hook, no_hook
from shellgate.store.repositories.rows import delete_row, scan_scope

ServiceEndpoint = openshell_pb2.ServiceEndpoint
SERVICE_TYPE = "service_endpoint"

register_object_type(ServiceEndpoint.DESCRIPTOR.full_name, SERVICE_TYPE)


@dataclass
class ServiceHooks:
    before_endpoint_write: Hook = no_hook
    """ExposeService found its sandbox live and is about to write its row."""


class ServiceRepository:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.hooks = ServiceHooks()

    async def find(self, key: str, workspace: str) -> ServiceEndpoint | None:
        return await self.store.get_message_by_name(ServiceEndpoint, key, workspace)

    async def list_page(
        self, *, workspace: str, sandbox_id: str | None, limit: int, page_token: str
    ) -> tuple[Sequence[ServiceEndpoint], str]:
        return await self.store.list_messages(
            ServiceEndpoint,
            workspace=workspace,
            scope=sandbox_id,
            limit=limit,
            page_token=page_token,
        )

    async def expose(
        self,
        candidate: ServiceEndpoint,
        change: Mutation[ServiceEndpoint],
    ) -> tuple[ServiceEndpoint, bool]:
        """Create ``candidate`` or apply ``change`` to the row of its key; (row, created)."""
        key = candidate.metadata.name
        workspace = candidate.metadata.workspace or DEFAULT_WORKSPACE

        await self.hooks.before_endpoint_write(key)

        async def attempt() -> tuple[ServiceEndpoint, bool]:
            record = await self.store.get_by_name(SERVICE_TYPE, key, workspace)
            if record is None:
                return await self._create(candidate), True
            if record.scope != candidate.sandbox_id:
                await delete_row(self.store, record)  # left by a removed sandbox
                raise Conflict(None)
            outcome = await self.store.update_message_cas(
                ServiceEndpoint, record.id, change, record.resource_version
            )
            return outcome.message, False

        return await self.store.retry_on_conflict(
            attempt, object_type=SERVICE_TYPE, retriable=(UniqueViolation,)
        )

    async def _create(self, candidate: ServiceEndpoint) -> ServiceEndpoint:
        created = ServiceEndpoint()
        created.CopyFrom(candidate)
        meta = created.metadata
        result = await self.store.put_if(
            SERVICE_TYPE,
            meta.id,
            meta.name,
            encode_for_storage(created),
            dict(meta.labels),
            WriteCondition.MUST_CREATE,
            meta.workspace or DEFAULT_WORKSPACE,
            scope=created.sandbox_id,
        )
        meta.resource_version = result.resource_version
        meta.created_time.FromMilliseconds(result.created_at_ms)
        return created

    async def check_owner(
        self, written: ServiceEndpoint, owner_is_live: Callable[[], Awaitable[object]]
    ) -> None:
        """After the write: ``owner_is_live`` re-reads the sandbox and raises when it is gone
        or going; then the row just written is removed again before the error propagates."""
        try:
            await owner_is_live()
        except BaseException:
            record = await self.store.get(SERVICE_TYPE, written.metadata.id)
            if record is not None:
                await delete_row(self.store, record)
            raise

    async def delete(self, key: str, workspace: str) -> bool:
        """Delete the row of ``key`` at the version read (re-read after a lost race); False
        when there is none."""
        record = await self.store.get_by_name(SERVICE_TYPE, key, workspace)
        if record is None:
            return False
        return await delete_row(self.store, record)

    async def remove_owned(self, sandbox_id: str) -> int:
        """Remove a removed sandbox's endpoints, each bound to the version read."""
        removed = 0
        for record in await scan_scope(self.store, SERVICE_TYPE, sandbox_id):
            removed += await delete_row(self.store, record)
        return removed
