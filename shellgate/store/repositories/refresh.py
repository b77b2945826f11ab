"""Provider refresh configuration and rotation request rows.

A refresh row (``provider_refresh``, scope = provider id) is created or updated with a named
condition on every write: none there → ``MUST_CREATE``; there → ``update_message_cas``. Its
material is sealed like provider credentials (``SecretSealer``, bound to the row id): the
mutation sees it open, and whatever it leaves is sealed again before the write.

A rotation request row (``provider_rotation``, scope = provider id) is ``MUST_CREATE`` under
an id derived from the request, so a repeated request finds its first arrival's row. The
rotation itself is a CAS on the refresh row whose mutation records each request id once
(``reconcilers.refresh.RotationChange``); then the request row is marked applied by CAS.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from shellgate.api import internal_pb2
from shellgate.store.base import Mutation, Store, decode, encode_for_storage
from shellgate.store.errors import NotFound, UniqueViolation
from shellgate.store.messages import register_object_type
from shellgate.store.records import DEFAULT_WORKSPACE, WriteCondition
from shellgate.store.repositories.hooks import Hook, no_hook
from shellgate.store.repositories.rows import delete_row, scan_scope
from shellgate.store.secrets import SecretSealer, is_sealed

M = TypeVar("M", internal_pb2.ProviderRefreshConfig, internal_pb2.ProviderRotationRequest)
RefreshConfig = internal_pb2.ProviderRefreshConfig
RotationRequest = internal_pb2.ProviderRotationRequest
REFRESH_TYPE = "provider_refresh"
ROTATION_TYPE = "provider_rotation"

register_object_type(RefreshConfig.DESCRIPTOR.full_name, REFRESH_TYPE)
register_object_type(RotationRequest.DESCRIPTOR.full_name, ROTATION_TYPE)


@dataclass
class RefreshHooks:
    before_configure_write: Hook = no_hook
    """ConfigureProviderRefresh found its provider and writes the refresh row next."""
    before_rotation: Hook = no_hook
    """RotateProviderCredential has its request row and records the rotation next."""


class RefreshRepository:
    def __init__(self, store: Store, sealer: SecretSealer) -> None:
        self.store = store
        self.sealer = sealer
        self.hooks = RefreshHooks()

    async def get(self, row_id: str) -> RefreshConfig | None:
        return await self.store.get_message(RefreshConfig, row_id)

    async def of_provider(self, provider_id: str) -> list[RefreshConfig]:
        rows = await scan_scope(self.store, REFRESH_TYPE, provider_id)
        return [decode(RefreshConfig, r) for r in rows]

    async def configure(
        self, candidate: RefreshConfig, change: Mutation[RefreshConfig]
    ) -> RefreshConfig:
        """Create ``candidate`` (sealed) or apply ``change`` to the row there (sealed again)."""
        row_id = candidate.metadata.id
        await self.hooks.before_configure_write(row_id)

        def sealed(config: RefreshConfig) -> RefreshConfig:
            stored = dict(config.material)
            self.sealer.open_map(config.material, row_id)
            opened = dict(config.material)
            changed = change(config)
            if dict(changed.material) == opened and all(map(is_sealed, stored.values())):
                changed.material.clear()
                changed.material.update(stored)  # unchanged: the same bytes, so no write
            else:
                self.sealer.seal_map(changed.material, row_id)
            return changed

        async def attempt() -> RefreshConfig:
            try:
                outcome = await self.store.update_message_cas(RefreshConfig, row_id, sealed)
                written: RefreshConfig = outcome.message
                return written
            except NotFound:
                fresh = RefreshConfig()
                fresh.CopyFrom(candidate)
                self.sealer.seal_map(fresh.material, row_id)
                return await self._insert(fresh, REFRESH_TYPE, fresh.status.provider_id)

        return await self.store.retry_on_conflict(
            attempt, object_type=REFRESH_TYPE, retriable=(UniqueViolation,)
        )

    async def _insert(self, message: M, object_type: str, scope: str) -> M:
        """``MUST_CREATE`` the row, scoped to its provider."""
        meta: Any = message.metadata
        result = await self.store.put_if(
            object_type,
            meta.id,
            None,
            encode_for_storage(message),
            {},
            WriteCondition.MUST_CREATE,
            meta.workspace or DEFAULT_WORKSPACE,
            scope=scope,
        )
        meta.resource_version = result.resource_version
        meta.created_time.FromMilliseconds(result.created_at_ms)
        return message

    async def request_rotation(self, request: RotationRequest) -> RotationRequest:
        """The request's row: created now, or the one its first arrival created."""
        try:
            return await self._insert(request, ROTATION_TYPE, request.provider_id)
        except UniqueViolation:
            existing = await self.store.get_message(RotationRequest, request.metadata.id)
            if existing is None:
                raise
            return existing

    async def rotate(
        self,
        refresh_id: str,
        request: RotationRequest,
        change: Mutation[RefreshConfig],
        applied: Mutation[RotationRequest],
    ) -> RefreshConfig:
        """Record the rotation on the refresh row (the mutation counts each request id
        once), then mark the request row applied; both by CAS."""
        await self.hooks.before_rotation(request.metadata.id)
        outcome = await self.store.update_message_cas(RefreshConfig, refresh_id, change)
        if not request.applied:
            await self.store.update_message_cas(RotationRequest, request.metadata.id, applied)
        written: RefreshConfig = outcome.message
        return written

    async def delete_rotation(self, row_id: str) -> bool:
        record = await self.store.get(ROTATION_TYPE, row_id)
        return record is not None and await delete_row(self.store, record)

    async def remove_owned(self, provider_id: str) -> int:
        """Remove a deleted provider's refresh and rotation rows, each at the version read."""
        removed = 0
        for object_type in (REFRESH_TYPE, ROTATION_TYPE):
            for record in await scan_scope(self.store, object_type, provider_id):
                removed += await delete_row(self.store, record)
        return removed

    async def delete(self, row_id: str) -> bool:
        record = await self.store.get(REFRESH_TYPE, row_id)
        return record is not None and await delete_row(self.store, record)

    async def rotations_of(self, provider_id: str) -> Sequence[RotationRequest]:
        rows = await scan_scope(self.store, ROTATION_TYPE, provider_id)
        return [decode(RotationRequest, r) for r in rows]
