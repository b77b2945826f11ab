"""Versioned rows (policy revisions) on SQLite and Postgres: ``list_versions``,
``get_version``, the ``objects_version_uq`` arbiter, and the status column kept by
``update_message_cas(..., status=...)``."""

from __future__ import annotations

import asyncio

import pytest

from shellgate.api import openshell_pb2
from shellgate.store import Store, UniqueViolation, WriteCondition
from tests.support.objects import sandbox

MUST_CREATE = WriteCondition.MUST_CREATE


async def put_version(store: Store, scope: str, version: int, status: str = "pending") -> None:
    await store.put_if(
        "sandbox_policy",
        f"{scope}-v{version}",
        None,
        b"p",
        {},
        MUST_CREATE,
        scope=scope,
        version=version,
        status=status,
    )


async def test_newest_first_paged_filtered_and_scoped(store: Store) -> None:
    for version in (1, 2, 3, 4, 5):
        await put_version(store, "s1", version, "loaded" if version == 2 else "pending")
    await put_version(store, "s2", 9)
    rows = await store.list_versions("sandbox_policy", "s1")
    assert [r.version for r in rows] == [5, 4, 3, 2, 1]
    assert rows[0].scope == "s1" and rows[0].status == "pending" and rows[0].name is None
    page = await store.list_versions("sandbox_policy", "s1", below=4, limit=2)
    assert [r.version for r in page] == [3, 2]
    active = await store.list_versions("sandbox_policy", "s1", statuses=["loaded"])
    assert [r.version for r in active] == [2]
    assert await store.list_versions("sandbox_policy", "s1", statuses=[]) == []
    assert await store.list_versions("sandbox_policy", "nobody") == []
    found = await store.get_version("sandbox_policy", "s1", 3)
    assert found is not None and found.id == "s1-v3"
    assert await store.get_version("sandbox_policy", "s1", 7) is None


async def test_one_version_per_scope_is_arbitrated_by_the_index(store: Store) -> None:
    await put_version(store, "s1", 1)
    with pytest.raises(UniqueViolation) as caught:
        await store.put_if(
            "sandbox_policy",
            "other-id",
            None,
            b"p",
            {},
            MUST_CREATE,
            scope="s1",
            version=1,
            status="pending",
        )
    assert caught.value.constraint == "objects_version_uq"
    await put_version(store, "s2", 1)  # another scope may use the same number


async def test_concurrent_inserts_of_one_version_one_wins(
    store: Store, second_store: Store
) -> None:
    async def insert(target: Store, n: int) -> bool:
        try:
            await target.put_if(
                "sandbox_policy",
                f"w{n}",
                None,
                b"p",
                {},
                MUST_CREATE,
                scope="s",
                version=1,
                status="pending",
            )
        except UniqueViolation:
            return False
        return True

    results = await asyncio.gather(*(insert((store, second_store)[n % 2], n) for n in range(8)))
    assert sum(results) == 1


async def test_update_message_cas_keeps_the_status_column(store: Store) -> None:
    message = sandbox("alpha")
    created = await store.create_message(message)

    def to_ready(current: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        current.status.phase = openshell_pb2.SANDBOX_PHASE_READY
        return current

    def phase_word(current: openshell_pb2.Sandbox) -> str:
        return openshell_pb2.SandboxPhase.Name(current.status.phase)

    await store.update_message_cas(
        openshell_pb2.Sandbox, created.metadata.id, to_ready, status=phase_word
    )
    record = await store.get("sandbox", created.metadata.id)
    assert record is not None and record.status == "SANDBOX_PHASE_READY"
    # Without ``status`` the column is left as it was.
    await store.update_message_cas(
        openshell_pb2.Sandbox,
        created.metadata.id,
        lambda s: (s.metadata.labels.update(a="b"), s)[1],
    )
    record = await store.get("sandbox", created.metadata.id)
    assert record is not None and record.status == "SANDBOX_PHASE_READY"
