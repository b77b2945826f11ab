"""Sandbox workload template rows, and the template side of the guard that no sandbox names a
template that was deleted after the sandbox was built from it.

The protocol is DeleteProvider's, for the same reason (a check and a delete are two steps,
and a create may land between them). A sandbox created from a template records the template
in its row first, then fences the template (``fence``): it re-writes the template row
unchanged at the version it read, so the template's version moves. DeleteSandboxTemplate
(``delete_unreferenced``) reads the template's version, scans the sandboxes of its workspace
for one created from it, and deletes with ``delete_if`` at the version read *before* the
scan. A sandbox written after that read was fenced after it was written, so the delete fails
with Conflict, reads and scans again, finds it and refuses; a sandbox written before the read
is found by the scan. A fence that finds the template gone raises ``TemplateMissing``, and
the create removes its sandbox again.

Templates have no update RPC: every version of one template row (one id) holds the same
spec; the version moves only with fences. A sandbox records the version it read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shellgate.api import openshell_pb2
from shellgate.store.base import Store
from shellgate.store.errors import Conflict
from shellgate.store.messages import register_object_type
from shellgate.store.records import ObjectRecord
from shellgate.store.repositories.errors import TemplateInUse, TemplateMissing
from shellgate.store.repositories.hooks import Hook, no_hook

SandboxWorkloadTemplate = openshell_pb2.SandboxWorkloadTemplate
TEMPLATE_TYPE = "sandbox_template"
SCAN_PAGE = 1000

register_object_type(SandboxWorkloadTemplate.DESCRIPTOR.full_name, TEMPLATE_TYPE)


@dataclass
class TemplateHooks:
    after_reference_scan: Hook = no_hook
    """DeleteSandboxTemplate read the template's version and found no sandbox built from it;
    it deletes next."""


class TemplateRepository:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.hooks = TemplateHooks()

    async def find(self, name: str, workspace: str) -> SandboxWorkloadTemplate | None:
        return await self.store.get_message_by_name(SandboxWorkloadTemplate, name, workspace)

    async def require(self, name: str, workspace: str) -> SandboxWorkloadTemplate:
        """The template, as read now; ``TemplateMissing`` when there is none."""
        found = await self.find(name, workspace)
        if found is None:
            raise TemplateMissing(name)
        return found

    async def list_page(self, **kwargs: Any) -> tuple[Sequence[SandboxWorkloadTemplate], str]:
        return await self.store.list_messages(SandboxWorkloadTemplate, **kwargs)

    async def create(self, candidate: SandboxWorkloadTemplate) -> SandboxWorkloadTemplate:
        """``MUST_CREATE``: a taken name in the workspace is ``UniqueViolation``."""
        return await self.store.create_message(candidate)

    async def fence(self, name: str, workspace: str) -> None:
        """Move the template's version on, proving it still exists after a sandbox built
        from it was written. ``TemplateMissing`` when it is gone.

        The same one-statement fence as a provider's (``ProviderRepository.fence``): it is
        conditioned on the row's existence, not on a version read before, so concurrent
        fences of one template never conflict with each other; the delete only needs the
        version to have moved after the reference was written."""
        if not await self._write_fence(name, workspace):
            raise TemplateMissing(name)
        self.store.observer.cas_attempt(TEMPLATE_TYPE, "written")

    async def _write_fence(self, name: str, workspace: str) -> bool:
        """The fence itself: the template's version, moved on; False when it is gone."""
        return await self.store.touch_by_name(TEMPLATE_TYPE, name, workspace) is not None

    async def delete_unreferenced(self, name: str, workspace: str) -> bool:
        """Delete the template unless a sandbox was built from it; False when there is none.

        ``TemplateInUse`` names the sandboxes; Conflict when every attempt lost to a
        concurrent writer (a fence).
        """

        async def attempt() -> bool:
            record = await self.store.get_by_name(TEMPLATE_TYPE, name, workspace)
            if record is None:
                self.store.observer.cas_attempt(TEMPLATE_TYPE, "noop")
                return False
            users = await self.sandboxes_built_from(name, workspace)
            if users:
                raise TemplateInUse(name, users)
            await self.hooks.after_reference_scan(record.id)
            if not await self._delete_at_version_read(record):
                raise Conflict(None)  # gone since the read: read again
            self.store.observer.cas_attempt(TEMPLATE_TYPE, "written")
            return True

        return await self.store.retry_on_conflict(attempt, object_type=TEMPLATE_TYPE)

    async def _delete_at_version_read(self, record: ObjectRecord) -> bool:
        """``delete_if`` at the version read before the reference scan: a fence since then
        makes it fail."""
        return await self.store.delete_if(TEMPLATE_TYPE, record.id, record.resource_version)

    async def sandboxes_built_from(self, name: str, workspace: str) -> list[str]:
        users: list[str] = []
        token = ""
        while True:
            page, token = await self.store.list_messages(
                openshell_pb2.Sandbox, workspace=workspace, limit=SCAN_PAGE, page_token=token
            )
            users += [
                s.metadata.name for s in page if s.created_from_workload_template.name == name
            ]
            if not token:
                return users
