"""Rows behind settings, policy revisions and draft chunks, and the loops that write them.

Three write patterns, each named by its condition (docs/config.md):

* **Settings rows** are read-mutate-CAS through ``update_message_cas`` with a pure mutation
  (one key set or deleted, the revision bumped only on a change). A row is created with
  ``MUST_CREATE`` on first use; losing that create race (``UniqueViolation``) means another
  writer created it, so we read it and apply the change again.
* **Policy revisions** are inserts of version n+1 in their scope. The unique index
  ``objects_version_uq`` is the arbiter: when another writer took n+1 first, we read the new
  latest revision, rebuild the candidate from it (re-applying merge operations, approvals),
  validate again and insert again, at most ``INSERT_ATTEMPTS`` times, then ABORTED.
* **Status changes** (revision and chunk) go through ``update_message_cas`` with a mutation
  that checks the current state, and keep the status column equal to the payload's status.

No in-process lock guards any of it: every replica may run every loop at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from google.protobuf.message import Message

from shellgate.api import internal_pb2, sandbox_pb2
from shellgate.controller.gateway import Gateway
from shellgate.reconcilers.policy import (
    ACTIVE_WORDS,
    PENDING,
    new_revision,
    policy_hash,
    require_valid_policy,
    revision_status,
    status_word,
    supersede,
)
from shellgate.store import (
    Conflict,
    NotFound,
    ObjectRecord,
    StoreError,
    UniqueViolation,
    WriteCondition,
    decode,
    register_object_type,
)

log = logging.getLogger(__name__)

GatewaySettings = internal_pb2.GatewaySettings
SandboxSettings = internal_pb2.SandboxSettings
StoredPolicyRevision = internal_pb2.StoredPolicyRevision
StoredDraftChunk = internal_pb2.StoredDraftChunk
SandboxPolicy = sandbox_pb2.SandboxPolicy
M = TypeVar("M", bound=Message)

GATEWAY_SETTINGS_TYPE = "gateway_settings"
SANDBOX_SETTINGS_TYPE = "sandbox_settings"
REVISION_TYPE = "sandbox_policy"
CHUNK_TYPE = "draft_policy_chunk"
GATEWAY_SETTINGS_ID = "gateway-settings"
VERSION_INDEX = "objects_version_uq"
CREATE_ATTEMPTS = 5
INSERT_ATTEMPTS = 5
DELETE_ATTEMPTS = 5
SCAN_PAGE = 1000

for _message, _object_type in (
    (GatewaySettings, GATEWAY_SETTINGS_TYPE),
    (SandboxSettings, SANDBOX_SETTINGS_TYPE),
    (StoredPolicyRevision, REVISION_TYPE),
    (StoredDraftChunk, CHUNK_TYPE),
):
    register_object_type(_message.DESCRIPTOR.full_name, _object_type)

_rng = random.Random()


# --- settings ---------------------------------------------------------------------------------


def sandbox_settings_id(sandbox_id: str) -> str:
    """Keyed by the sandbox id, never its name: a new sandbox reusing a deleted one's name
    must not inherit its settings."""
    return f"sandbox-settings-{sandbox_id}"


def blank_gateway_settings() -> GatewaySettings:
    blank = GatewaySettings()
    blank.metadata.id = GATEWAY_SETTINGS_ID
    blank.metadata.name = "global"
    return blank


def blank_sandbox_settings(sandbox_id: str, workspace: str) -> SandboxSettings:
    blank = SandboxSettings(sandbox_id=sandbox_id)
    blank.metadata.id = sandbox_settings_id(sandbox_id)
    blank.metadata.workspace = workspace
    return blank


async def load_gateway_settings(gw: Gateway) -> GatewaySettings | None:
    return await gw.store.get_message(GatewaySettings, GATEWAY_SETTINGS_ID)


async def load_sandbox_settings(gw: Gateway, sandbox_id: str) -> SandboxSettings | None:
    return await gw.store.get_message(SandboxSettings, sandbox_settings_id(sandbox_id))


async def update_settings(
    gw: Gateway, message_type: type[M], blank: M, mutate: Callable[[M], M]
) -> M:
    """Apply ``mutate`` to the settings row ``blank`` names, creating the row on first use.

    ``update_message_cas`` re-reads and re-applies on a conflict (5 attempts, full jitter);
    a missing row is created with ``MUST_CREATE``, and a lost create race sends us back to
    the read. A change that leaves a missing row empty (deleting an unset key) writes nothing.
    """
    row_id = blank.metadata.id  # type: ignore[attr-defined]
    for _ in range(CREATE_ATTEMPTS):
        try:
            return (await gw.store.update_message_cas(message_type, row_id, mutate)).message
        except NotFound:
            pass
        empty = type(blank)()
        empty.CopyFrom(blank)
        candidate = mutate(empty)
        if candidate == blank:
            return candidate
        try:
            return await gw.store.create_message(candidate)
        except UniqueViolation:
            continue  # created concurrently: read it and apply the change to it
    raise Conflict(None)


# --- scoped rows ------------------------------------------------------------------------------


def _payload(message: Message) -> bytes:
    stored = type(message)()
    stored.CopyFrom(message)
    stored.metadata.resource_version = 0  # type: ignore[attr-defined]
    return stored.SerializeToString(deterministic=True)


async def insert_scoped(
    gw: Gateway,
    object_type: str,
    message: M,
    *,
    scope: str,
    status: str,
    version: int | None = None,
) -> M:
    """``MUST_CREATE`` a row that belongs to ``scope`` (a sandbox id); returns it with its
    resource_version. ``UniqueViolation`` names the index that refused it."""
    meta = message.metadata  # type: ignore[attr-defined]
    result = await gw.store.put_if(
        object_type,
        meta.id,
        None,
        _payload(message),
        {},
        WriteCondition.MUST_CREATE,
        meta.workspace or "default",
        scope=scope,
        version=version,
        status=status,
    )
    meta.resource_version = result.resource_version
    return message


async def scan_scope(gw: Gateway, object_type: str, scope: str) -> list[ObjectRecord]:
    """Every row of ``object_type`` in ``scope``, in any workspace, oldest first."""
    records: list[ObjectRecord] = []
    token = ""
    while True:
        page = await gw.store.list(
            object_type, workspace=None, scope=scope, limit=SCAN_PAGE, page_token=token
        )
        records += page.records
        token = page.next_page_token
        if not token:
            return records


async def list_chunks(gw: Gateway, sandbox_id: str) -> list[StoredDraftChunk]:
    return [decode(StoredDraftChunk, r) for r in await scan_scope(gw, CHUNK_TYPE, sandbox_id)]


async def delete_record(gw: Gateway, record: ObjectRecord) -> bool:
    """Delete a row bound to its version, re-reading after a concurrent change."""
    for _ in range(DELETE_ATTEMPTS):
        try:
            return await gw.store.delete_if(record.object_type, record.id, record.resource_version)
        except Conflict:
            fresh = await gw.store.get(record.object_type, record.id)
            if fresh is None:
                return False
            record = fresh
    raise Conflict(None)


# --- policy revisions -------------------------------------------------------------------------


async def latest_revision(gw: Gateway, scope: str) -> StoredPolicyRevision | None:
    rows = await gw.store.list_versions(REVISION_TYPE, scope, limit=1)
    return decode(StoredPolicyRevision, rows[0]) if rows else None


async def revision_at(gw: Gateway, scope: str, version: int) -> StoredPolicyRevision | None:
    record = await gw.store.get_version(REVISION_TYPE, scope, version)
    return None if record is None else decode(StoredPolicyRevision, record)


Candidate = Callable[[StoredPolicyRevision | None], SandboxPolicy]
"""Builds the policy to store from the latest revision (None: there is none yet). Pure, and
run again on every attempt, so a retry re-applies the change to what is latest then."""


async def commit_revision(
    gw: Gateway,
    scope: str,
    workspace: str,
    build: Candidate,
    *,
    status: int = PENDING,
    supersedes: Sequence[str] = ("pending",),
    reusable: Callable[[StoredPolicyRevision], bool] = lambda _latest: True,
) -> tuple[StoredPolicyRevision, bool]:
    """Insert the candidate as version n+1 of ``scope``; returns (revision, inserted).

    A candidate equal to the latest revision (same hash) returns that revision and writes
    nothing, unless ``reusable`` says that revision cannot serve (a superseded global one).
    The candidate is validated before its insert. When another writer took n+1 first, the
    loop reads again and rebuilds; after ``INSERT_ATTEMPTS`` it raises Conflict.
    After an insert, older revisions in ``supersedes`` are superseded.
    """
    revision, inserted = await _commit_loop(
        gw, scope, workspace, build, status=status, supersedes=supersedes, reusable=reusable
    )
    assert revision is not None  # nothing can decline the change without ``owed``
    return revision, inserted


Owed = Callable[[], Awaitable[bool]]
"""Re-checks, after the latest revision was read, that the change is still owed at all."""


async def commit_owed_revision(
    gw: Gateway,
    scope: str,
    workspace: str,
    build: Candidate,
    owed: Owed,
    annotate: Callable[[StoredPolicyRevision], None],
) -> tuple[StoredPolicyRevision | None, bool]:
    """``commit_revision`` for a change recorded elsewhere (a chunk's effect).

    On every attempt, after reading the latest revision and before building, ``owed`` reads
    the record again; False (the record moved on: undone, re-decided, settled) ends the
    loop without a write, returning the latest revision (None: there is none). Reading the
    latest revision first is what makes this safe against the writer that moved the record
    on: its own insert reads the latest revision after its record write, so the version
    index orders the two inserts, and a retry re-checks ``owed``. ``annotate`` may add
    notes to the revision row before its insert (not part of the policy or its hash).
    """
    return await _commit_loop(gw, scope, workspace, build, owed=owed, annotate=annotate)


async def _commit_loop(
    gw: Gateway,
    scope: str,
    workspace: str,
    build: Candidate,
    *,
    status: int = PENDING,
    supersedes: Sequence[str] = ("pending",),
    reusable: Callable[[StoredPolicyRevision], bool] = lambda _latest: True,
    owed: Owed | None = None,
    annotate: Callable[[StoredPolicyRevision], None] | None = None,
) -> tuple[StoredPolicyRevision | None, bool]:
    for attempt in range(1, INSERT_ATTEMPTS + 1):
        latest = await latest_revision(gw, scope)
        if owed is not None and not await owed():
            gw.store.observer.cas_attempt(REVISION_TYPE, "noop")
            gw.store.observer.cas_call(REVISION_TYPE, attempt, exhausted=False)
            return latest, False
        policy = build(latest)
        digest = policy_hash(policy)
        if latest is not None and latest.revision.policy_hash == digest and reusable(latest):
            gw.store.observer.cas_attempt(REVISION_TYPE, "noop")
            gw.store.observer.cas_call(REVISION_TYPE, attempt, exhausted=False)
            return latest, False
        require_valid_policy(policy)
        version = (latest.revision.version if latest is not None else 0) + 1
        stored = new_revision(
            revision_id=str(uuid.uuid4()),
            sandbox_id=scope,
            workspace=workspace,
            version=version,
            policy=policy,
            digest=digest,
            now_ms=gw.clock_ms(),
            status=status,
        )
        if annotate is not None:
            annotate(stored)
        try:
            await insert_scoped(
                gw, REVISION_TYPE, stored, scope=scope, version=version, status=status_word(status)
            )
        except UniqueViolation as violation:
            if violation.constraint != VERSION_INDEX:
                raise
            gw.store.observer.cas_attempt(REVISION_TYPE, "conflict")
            if attempt < INSERT_ATTEMPTS:
                await asyncio.sleep(gw.store.retry.pause(attempt, _rng))
            continue
        gw.store.observer.cas_attempt(REVISION_TYPE, "written")
        gw.store.observer.cas_call(REVISION_TYPE, attempt, exhausted=False)
        await supersede_older(gw, scope, version, supersedes)
        return stored, True
    gw.store.observer.cas_call(REVISION_TYPE, INSERT_ATTEMPTS, exhausted=True)
    raise Conflict(None)


async def revisions_below(
    gw: Gateway, scope: str, below: int | None, limit: int
) -> list[StoredPolicyRevision]:
    """Up to ``limit`` revisions of ``scope`` under version ``below`` (None: all), newest
    first."""
    rows = await gw.store.list_versions(REVISION_TYPE, scope, below=below, limit=limit)
    return [decode(StoredPolicyRevision, row) for row in rows]


async def supersede_older(
    gw: Gateway, scope: str, below: int | None, statuses: Sequence[str] = ACTIVE_WORDS
) -> int:
    """Mark revisions of ``scope`` under ``below`` (all, when None) superseded, each by CAS.

    Row by row and idempotent: a replica that stops half-way leaves work the next sweep
    (the next insert or LOADED report) finishes. Returns how many rows changed.
    """
    changed = 0
    while statuses:
        rows = await gw.store.list_versions(
            REVISION_TYPE, scope, below=below, statuses=statuses, limit=SCAN_PAGE
        )
        for record in rows:
            changed += await _supersede_one(gw, record)
        if len(rows) < SCAN_PAGE:
            return changed
        below = rows[-1].version
    return changed


async def _supersede_one(gw: Gateway, record: ObjectRecord) -> int:
    try:
        await gw.store.update_message_cas(
            StoredPolicyRevision, record.id, supersede, status=revision_status
        )
    except NotFound:
        return 0
    except StoreError as exc:  # another sweep will retire it
        log.warning("could not supersede policy revision %s: %s", record.id, exc)
        return 0
    return 1


# --- cleanup ----------------------------------------------------------------------------------


async def cleanup_sandbox_config(gw: Gateway, sandbox_id: str, sandbox_name: str) -> int:
    """Remove a deleted sandbox's settings, policy revisions and draft chunks.

    Every delete is bound to the version just read (``delete_if``); a row changed under us
    is read again and deleted at its new version. Safe to run on several replicas at once
    and to repeat. Returns the number of rows removed.
    """
    removed = 0
    settings = await gw.store.get(SANDBOX_SETTINGS_TYPE, sandbox_settings_id(sandbox_id))
    if settings is not None:
        removed += await delete_record(gw, settings)
    for object_type in (REVISION_TYPE, CHUNK_TYPE):
        for record in await scan_scope(gw, object_type, sandbox_id):
            removed += await delete_record(gw, record)
    if removed:
        log.info(
            "removed %d configuration rows of sandbox %s (%s)", removed, sandbox_name, sandbox_id
        )
    return removed
