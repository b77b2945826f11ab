"""Provider rows, and the provider side of the guard that no sandbox references a provider
that does not exist.

Two writers meet here. A sandbox that starts referencing a provider (attach, create) fences
the provider afterwards: one statement moves the provider's version on, whatever it is, if
the row still exists (``fence``; ``Store.touch_by_name``). DeleteProvider
(``delete_unreferenced``) reads the provider's version, scans the sandboxes of its workspace
for a reference, and deletes with ``delete_if`` at the version read *before* the scan. A
reference written after that read was fenced after it was written, so the delete fails with
Conflict, reads and scans again, finds the reference and refuses; a reference written before
the read is found by the scan. A fence that finds the provider gone raises
``ProviderMissing`` and the referencing writer takes its reference back out. Fences never
conflict with each other, so attaches to one shared provider do not retry or abort because
of one another.

Credentials are stored sealed (``shellgate.store.secrets``): creates seal them, an update's
mutation sees them open and whatever it changes is sealed again, and a row whose credentials
did not change keeps its ciphertext byte for byte, so a no-op update still writes nothing.
Reads return them sealed; responses redact them anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.store.base import Mutation, Store
from shellgate.store.errors import Conflict
from shellgate.store.messages import register_object_type
from shellgate.store.records import CasOutcome, ObjectRecord
from shellgate.store.repositories.errors import ProviderInUse, ProviderMissing
from shellgate.store.repositories.fences import SharedFences
from shellgate.store.repositories.hooks import Hook, no_hook
from shellgate.store.secrets import SecretSealer, is_sealed

Provider = datamodel_pb2.Provider
PROVIDER_TYPE = "provider"
SCAN_PAGE = 1000

register_object_type(Provider.DESCRIPTOR.full_name, PROVIDER_TYPE)


@dataclass
class ProviderHooks:
    after_reference_scan: Hook = no_hook
    """DeleteProvider read the provider's version and found no reference; it deletes next."""


class ProviderRepository:
    def __init__(self, store: Store, sealer: SecretSealer) -> None:
        self.store = store
        self.sealer = sealer
        self.hooks = ProviderHooks()
        self._fences = SharedFences()

    async def find(self, name: str, workspace: str) -> Provider | None:
        return await self.store.get_message_by_name(Provider, name, workspace)

    async def list_page(self, **kwargs: Any) -> tuple[Sequence[Provider], str]:
        return await self.store.list_messages(Provider, **kwargs)

    async def create(self, candidate: Provider) -> Provider:
        sealed = Provider()
        sealed.CopyFrom(candidate)
        self.sealer.seal_map(sealed.credentials, sealed.metadata.id)
        return await self.store.create_message(sealed)

    async def update(
        self, provider_id: str, mutation: Mutation[Provider], expected_version: int = 0
    ) -> CasOutcome[Provider]:
        """``mutation`` sees the credentials open; what it changes is sealed again."""

        def on_open_credentials(stored: Provider) -> Provider:
            row_id = stored.metadata.id
            sealed = dict(stored.credentials)
            self.sealer.open_map(stored.credentials, row_id)
            opened = dict(stored.credentials)
            candidate = mutation(stored)
            if dict(candidate.credentials) == opened and all(map(is_sealed, sealed.values())):
                candidate.credentials.clear()
                candidate.credentials.update(sealed)  # unchanged: the same bytes, no write
            else:
                self.sealer.seal_map(candidate.credentials, row_id)  # changed, or stored plain
            return candidate

        return await self.store.update_message_cas(
            Provider, provider_id, on_open_credentials, expected_version
        )

    async def reseal(self, provider_id: str) -> bool:
        """Seal the row's credentials under the active key (``rotate-key``); True when it
        wrote, False when they already were. A CAS like any update, so it is safe while
        replicas run and a rotation that stopped half-way simply runs again."""

        def under_active_key(stored: Provider) -> Provider:
            if not self.sealer.sealed_under_active(stored.credentials):
                self.sealer.open_map(stored.credentials, stored.metadata.id)
                self.sealer.seal_map(stored.credentials, stored.metadata.id)
            return stored

        outcome = await self.store.update_message_cas(Provider, provider_id, under_active_key)
        return outcome.written

    async def require(self, names: Sequence[str], workspace: str) -> None:
        """``ProviderMissing`` unless every named provider exists (a first check; the fence
        after the reference is written is what makes it hold)."""
        for name in names:
            if await self.store.get_by_name(PROVIDER_TYPE, name, workspace) is None:
                raise ProviderMissing(name)

    async def fence(self, name: str, workspace: str) -> None:
        """Move the provider's version on, proving it still exists after a reference to it
        was written. ``ProviderMissing`` when it is gone.

        One statement, conditioned on the row's existence and not on a version read before:
        fences of concurrent attaches to one provider never conflict with each other (each
        moves the version on from wherever the last one left it), so a shared provider does
        not serialise its attaches through retries. What the delete needs is only that the
        version moved after the reference was written; any move does, so fences asked for at
        once in this process share one (``SharedFences``)."""
        if not await self._fences.fence(
            (workspace, name), lambda: self._write_fence(name, workspace)
        ):
            raise ProviderMissing(name)
        self.store.observer.cas_attempt(PROVIDER_TYPE, "written")

    async def _write_fence(self, name: str, workspace: str) -> bool:
        """The fence itself: the named provider's version, moved on; False when it is gone."""
        return await self.store.touch_by_name(PROVIDER_TYPE, name, workspace) is not None

    async def delete_unreferenced(self, name: str, workspace: str) -> bool:
        """Delete the provider unless a sandbox references it; False when there is none.

        ``ProviderInUse`` names the sandboxes that reference it; Conflict when every attempt
        lost to a concurrent writer (a fence, an update).
        """

        async def attempt() -> bool:
            record = await self.store.get_by_name(PROVIDER_TYPE, name, workspace)
            if record is None:
                self.store.observer.cas_attempt(PROVIDER_TYPE, "noop")
                return False
            users = await self.sandboxes_referencing(name, workspace)
            if users:
                raise ProviderInUse(name, users)
            await self.hooks.after_reference_scan(record.id)
            if not await self._delete_at_version_read(record):
                raise Conflict(None)  # gone since the read: read again
            self.store.observer.cas_attempt(PROVIDER_TYPE, "written")
            return True

        return await self.store.retry_on_conflict(attempt, object_type=PROVIDER_TYPE)

    async def _delete_at_version_read(self, record: ObjectRecord) -> bool:
        """``delete_if`` at the version read before the reference scan: a fence since then
        makes it fail."""
        return await self.store.delete_if(PROVIDER_TYPE, record.id, record.resource_version)

    async def sandboxes_referencing(self, name: str, workspace: str) -> list[str]:
        users: list[str] = []
        token = ""
        while True:
            page, token = await self.store.list_messages(
                openshell_pb2.Sandbox, workspace=workspace, limit=SCAN_PAGE, page_token=token
            )
            users += [s.metadata.name for s in page if name in s.spec.providers]
            if not token:
                return users
