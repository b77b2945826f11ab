"""Workspace rows and their members, and the guard that nothing lives in a deleted workspace.

A workspace is a row of type ``workspace`` outside every workspace (its workspace column is
empty), named uniquely by the name index, written by CAS like every other row. A member is a
row of type ``workspace_member`` *in* its workspace, named by the member's subject, so the
same index makes a subject a member at most once per workspace. Member rows carry a label
with a digest of the subject, so "the workspaces this subject belongs to" is one selector
query instead of a scan.

**The fence.** Sandboxes, providers and members are written into a workspace by other
requests while DeleteWorkspace may be running. The protocol, with no write to the workspace
row on the create path (so creates in one workspace do not serialize on it):

* DeleteWorkspace moves the row to TERMINATING by CAS, *then* scans the workspace for
  sandboxes and providers, removes the members, and deletes the row with ``delete_if`` at the
  TERMINATING version. Contents found: it moves the row back to ACTIVE and refuses. (A scan
  before the mark refuses the plain case without writing anything; only the scan after the
  mark counts for the guarantee.)
* A writer checks the workspace is ACTIVE (``admit``), writes its row, then reads the
  workspace again (``confirm``). If it is no longer ACTIVE, or gone, the writer removes its
  row and refuses.

Why it holds: a writer whose ``confirm`` saw ACTIVE wrote its row before that read, and the
read came before any TERMINATING mark still in force, so the delete's scan (which starts
after the mark) finds the row and refuses. A writer that confirms after the mark takes its
row back out. A delete whose mark was undone by another refusing delete fails its
``delete_if`` (the version moved) and starts over. What a crash between a writer's row and
its ``confirm`` can leave is the one gap; the same holds for every fence-after protocol here.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.store.base import Store, decode, encode_for_storage
from shellgate.store.errors import Conflict, NotFound, UniqueViolation
from shellgate.store.messages import register_object_type
from shellgate.store.records import DEFAULT_WORKSPACE, ObjectRecord, WriteCondition
from shellgate.store.repositories.errors import (
    WorkspaceMissing,
    WorkspaceNotEmpty,
    WorkspaceTerminating,
)
from shellgate.store.repositories.hooks import Hook, no_hook
from shellgate.store.repositories.rows import delete_row
from shellgate.store.selectors import Operator, Requirement, parse_selector

Workspace = datamodel_pb2.Workspace
WorkspaceMember = openshell_pb2.WorkspaceMember
WORKSPACE_TYPE = "workspace"
MEMBER_TYPE = "workspace_member"
OUTSIDE_WORKSPACES = ""
"""The workspace column of a workspace row: it belongs to none."""
CONTENT_TYPES = ("sandbox", "provider")
"""What a workspace must not hold to be deleted (their own rows go with a sandbox)."""
SUBJECT_LABEL = "openshell.ai/subject-digest"
ACTIVE = datamodel_pb2.WORKSPACE_PHASE_ACTIVE
TERMINATING = datamodel_pb2.WORKSPACE_PHASE_TERMINATING
SCAN_PAGE = 1000

register_object_type(Workspace.DESCRIPTOR.full_name, WORKSPACE_TYPE)
register_object_type(WorkspaceMember.DESCRIPTOR.full_name, MEMBER_TYPE)


def subject_digest(subject: str) -> str:
    """A label value for any subject (subjects are free text; label values are not)."""
    return hashlib.sha256(subject.encode()).hexdigest()[:40]


def selects(requirements: Sequence[Requirement], labels: Mapping[str, str]) -> bool:
    """The label selector's meaning, for rows already read (the SQL evaluates the same)."""
    for requirement in requirements:
        value = labels.get(requirement.key)
        match requirement.operator:
            case Operator.EQUALS | Operator.IN:
                ok = value is not None and value in requirement.values
            case Operator.NOT_EQUALS | Operator.NOT_IN:
                ok = value is None or value not in requirement.values
            case Operator.EXISTS:
                ok = value is not None
            case Operator.DOES_NOT_EXIST:
                ok = value is None
        if not ok:
            return False
    return True


def _any(_member: WorkspaceMember) -> None:
    """Accept any membership."""


@dataclass
class WorkspaceHooks:
    after_admission: Hook = no_hook
    """A writer saw the workspace ACTIVE and is about to write its row into it."""
    after_contents_scan: Hook = no_hook
    """DeleteWorkspace marked the workspace, found it empty, and is about to delete it."""


class WorkspaceRepository:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.hooks = WorkspaceHooks()

    # ----- workspaces -----------------------------------------------------------------

    async def find(self, name: str) -> Workspace | None:
        record = await self._record(name)
        return None if record is None else decode(Workspace, record)

    async def _record(self, name: str) -> ObjectRecord | None:
        return await self.store.get_by_name(WORKSPACE_TYPE, name, OUTSIDE_WORKSPACES)

    async def create(self, name: str, labels: dict[str, str] | None = None) -> Workspace:
        """``MUST_CREATE``; ``UniqueViolation`` when the name is taken."""
        workspace = Workspace()
        workspace.metadata.id = str(uuid.uuid4())
        workspace.metadata.name = name
        workspace.metadata.labels.update(labels or {})
        workspace.status.phase = ACTIVE
        result = await self.store.put_if(
            WORKSPACE_TYPE,
            workspace.metadata.id,
            name,
            encode_for_storage(workspace),
            dict(workspace.metadata.labels),
            WriteCondition.MUST_CREATE,
            OUTSIDE_WORKSPACES,
        )
        workspace.metadata.resource_version = result.resource_version
        workspace.metadata.created_time.FromMilliseconds(result.created_at_ms)
        return workspace

    async def ensure(self, name: str) -> bool:
        """Create the workspace unless it exists; True when this call created it. Replicas
        starting together all try; the name index lets one win and the others see it."""
        if await self._record(name) is not None:
            return False
        try:
            await self.create(name)
        except UniqueViolation:
            return False
        return True

    async def list_page(
        self, *, selector: str, limit: int, page_token: str
    ) -> tuple[Sequence[Workspace], str]:
        return await self.store.list_messages(
            Workspace,
            workspace=OUTSIDE_WORKSPACES,
            selector=selector,
            limit=limit,
            page_token=page_token,
        )

    async def list_for_subject(
        self, subject: str, *, selector: str, limit: int, page_token: str
    ) -> tuple[Sequence[Workspace], str]:
        """The workspaces ``subject`` is a member of that ``selector`` selects, paged by
        membership (a page may hold fewer than ``limit``; the token says whether more follow).
        """
        requirements = parse_selector(selector)
        page = await self.store.list(
            MEMBER_TYPE,
            workspace=None,
            selector=f"{SUBJECT_LABEL}={subject_digest(subject)}",
            limit=limit,
            page_token=page_token,
        )
        found = []
        for record in page.records:
            if decode(WorkspaceMember, record).principal_subject != subject:
                continue  # a digest collision: not this subject's membership
            workspace = await self.find(record.workspace)
            if workspace is not None and selects(requirements, workspace.metadata.labels):
                found.append(workspace)
        return found, page.next_page_token

    # ----- the fence ------------------------------------------------------------------

    async def admit(self, name: str, *, create_missing: bool) -> None:
        """Before a row is written into ``name``: the workspace must be ACTIVE, or missing
        when ``create_missing`` (a platform admin's implicit creation, made by ``confirm``
        once the row is written, so a create refused on its own row leaves no workspace)."""
        record = await self._record(name)
        if record is not None or not create_missing:
            _require_active(name, record)
        await self.hooks.after_admission(name)

    async def confirm(self, name: str, *, create_missing: bool = False) -> None:
        """After a row was written into ``name``: the workspace is still ACTIVE (made now
        if it is missing and ``create_missing``). The caller removes its row when this
        raises (see the module docstring for why that suffices). A workspace made here after
        a delete finished holds the row; one being deleted has either seen the row in its
        scan or refuses it here."""
        record = await self._record(name)
        if record is None and create_missing:
            await self.ensure(name)
            record = await self._record(name)
        _require_active(name, record)

    # ----- delete ---------------------------------------------------------------------

    async def delete(self, name: str) -> bool:
        """Delete an empty workspace and its members; False when there is none.

        ``WorkspaceNotEmpty`` when it holds sandboxes or providers (the workspace stays
        ACTIVE); Conflict when every attempt lost to a concurrent writer.
        """

        async def attempt() -> bool:
            record = await self._record(name)
            if record is None:
                self.store.observer.cas_attempt(WORKSPACE_TYPE, "noop")
                return False
            early = await self._contents(name)
            if early:  # the common refusal writes nothing
                raise WorkspaceNotEmpty(name, early)
            marked = await self._mark(record, TERMINATING)
            contents = await self._contents(name)
            if contents:
                await self._mark(marked, ACTIVE)
                raise WorkspaceNotEmpty(name, contents)
            await self._remove_members(name)
            await self.hooks.after_contents_scan(name)
            if not await self._delete_at_marked_version(marked):
                raise Conflict(None)  # gone since: read again
            self.store.observer.cas_attempt(WORKSPACE_TYPE, "written")
            return True

        return await self.store.retry_on_conflict(attempt, object_type=WORKSPACE_TYPE)

    async def _mark(self, record: ObjectRecord, phase: int) -> ObjectRecord:
        """The row in ``phase``, written at ``match(version read)`` unless already there."""
        workspace = decode(Workspace, record)
        if workspace.status.phase == phase:
            return record
        workspace.status.phase = phase  # type: ignore[assignment]
        payload = encode_for_storage(workspace)
        try:
            result = await self.store.put_if(
                WORKSPACE_TYPE,
                record.id,
                record.name,
                payload,
                None,
                WriteCondition.match(record.resource_version),
                OUTSIDE_WORKSPACES,
            )
        except NotFound:
            raise Conflict(None) from None
        return ObjectRecord(
            WORKSPACE_TYPE,
            record.id,
            record.name,
            record.workspace,
            payload,
            record.labels,
            result.resource_version,
            result.created_at_ms,
            result.updated_at_ms,
        )

    async def _contents(self, name: str) -> list[str]:
        """The kinds of rows ``name`` still holds (one row of each is enough to know)."""
        held = []
        for object_type in CONTENT_TYPES:
            page = await self.store.list(object_type, workspace=name, limit=1)
            if page.records:
                held.append(object_type)
        return held

    async def _delete_at_marked_version(self, marked: ObjectRecord) -> bool:
        """``delete_if`` at the TERMINATING version: if the mark was undone (and maybe
        redone) since, the scan this delete made no longer counts and it fails."""
        return await self.store.delete_if(WORKSPACE_TYPE, marked.id, marked.resource_version)

    async def _remove_members(self, name: str) -> None:
        while True:
            page = await self.store.list(MEMBER_TYPE, workspace=name, limit=SCAN_PAGE)
            for record in page.records:
                await delete_row(self.store, record)
            if not page.next_page_token:
                return

    # ----- members --------------------------------------------------------------------

    async def member(self, name: str, subject: str) -> WorkspaceMember | None:
        return await self.store.get_message_by_name(WorkspaceMember, subject, name)

    async def add_member(self, name: str, subject: str, role: int) -> WorkspaceMember:
        """``MUST_CREATE`` the membership (``UniqueViolation`` when the subject already is a
        member), fenced like every write into a workspace."""
        await self.admit(name, create_missing=False)
        member = WorkspaceMember(principal_subject=subject, role=role)  # type: ignore[arg-type]
        member.metadata.id = str(uuid.uuid4())
        member.metadata.name = subject
        member.metadata.workspace = name
        result = await self.store.put_if(
            MEMBER_TYPE,
            member.metadata.id,
            subject,
            encode_for_storage(member),
            {SUBJECT_LABEL: subject_digest(subject)},
            WriteCondition.MUST_CREATE,
            name,
        )
        member.metadata.resource_version = result.resource_version
        member.metadata.created_time.FromMilliseconds(result.created_at_ms)
        try:
            await self.confirm(name)
        except BaseException:
            await self._remove_member_row(member.metadata.id)
            raise
        return member

    async def _remove_member_row(self, member_id: str) -> None:
        record = await self.store.get(MEMBER_TYPE, member_id)
        if record is not None:
            await delete_row(self.store, record)

    async def remove_member(
        self, name: str, subject: str, check: Callable[[WorkspaceMember], None] = _any
    ) -> bool:
        """Remove the membership ``check`` accepted (it raises to refuse), bound to that row
        and version: a membership removed and added again meanwhile is another row, which
        this call does not touch. False when there is none."""
        record = await self.store.get_by_name(MEMBER_TYPE, subject, name)
        if record is None:
            return False
        check(decode(WorkspaceMember, record))
        return await delete_row(self.store, record)

    async def list_members(
        self, name: str, *, limit: int, page_token: str
    ) -> tuple[Sequence[WorkspaceMember], str]:
        return await self.store.list_messages(
            WorkspaceMember, workspace=name, limit=limit, page_token=page_token
        )


def _require_active(name: str, record: ObjectRecord | None) -> None:
    if record is None:
        raise WorkspaceMissing(name)
    if decode(Workspace, record).status.phase != ACTIVE:
        raise WorkspaceTerminating(name)


__all__ = [
    "DEFAULT_WORKSPACE",
    "MEMBER_TYPE",
    "WORKSPACE_TYPE",
    "Workspace",
    "WorkspaceMember",
    "WorkspaceRepository",
]
