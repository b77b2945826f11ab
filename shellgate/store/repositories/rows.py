"""Row-level steps the repositories share: the scoped insert, the scope scan and the
version-bound delete of one row (re-read after a lost race)."""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf.message import Message

from shellgate.store.base import Store, encode_for_storage
from shellgate.store.errors import Conflict
from shellgate.store.records import DEFAULT_WORKSPACE, ObjectRecord, WriteCondition

M = TypeVar("M", bound=Message)
SCAN_PAGE = 1000


async def insert_scoped(
    store: Store,
    object_type: str,
    message: M,
    *,
    scope: str,
    status: str,
    version: int | None = None,
) -> M:
    """``MUST_CREATE`` a row that belongs to ``scope`` (a sandbox id, or the global scope);
    returns it with its resource_version. ``UniqueViolation`` names the index that refused."""
    meta: Any = message.metadata  # type: ignore[attr-defined]
    result = await store.put_if(
        object_type,
        meta.id,
        None,
        encode_for_storage(message),
        {},
        WriteCondition.MUST_CREATE,
        meta.workspace or DEFAULT_WORKSPACE,
        scope=scope,
        version=version,
        status=status,
    )
    meta.resource_version = result.resource_version
    return message


async def scan_scope(store: Store, object_type: str, scope: str) -> list[ObjectRecord]:
    """Every row of ``object_type`` in ``scope``, in any workspace, oldest first."""
    records: list[ObjectRecord] = []
    token = ""
    while True:
        page = await store.list(
            object_type, workspace=None, scope=scope, limit=SCAN_PAGE, page_token=token
        )
        records += page.records
        token = page.next_page_token
        if not token:
            return records


async def delete_row(store: Store, record: ObjectRecord) -> bool:
    """Delete a row bound to its version; after a concurrent change, read it again and delete
    it at its new version. False when it was already gone; Conflict when every attempt lost."""
    current = record

    async def attempt() -> bool:
        nonlocal current
        try:
            deleted = await store.delete_if(
                current.object_type, current.id, current.resource_version
            )
        except Conflict:
            fresh = await store.get(current.object_type, current.id)
            if fresh is None:
                store.observer.cas_attempt(record.object_type, "noop")
                return False
            current = fresh
            raise
        store.observer.cas_attempt(record.object_type, "written" if deleted else "noop")
        return deleted

    return await store.retry_on_conflict(attempt, object_type=record.object_type)
