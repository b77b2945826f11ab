"""Compare-and-swap conformance: every case runs on a real SQLite file and on real Postgres.

Mirrors the reference gateway's persistence tests and adds what it lacked: typed
NotFound, bounded server-driven retries, aborting and no-op mutations.
"""

from __future__ import annotations

import asyncio

import pytest

from shellgate.api import openshell_pb2
from shellgate.store import (
    Conflict,
    InvalidMutation,
    NotFound,
    Store,
    UniqueViolation,
    WriteCondition,
)
from tests.support.objects import raw_bump, sandbox

READY = openshell_pb2.SANDBOX_PHASE_READY
MUST_CREATE = WriteCondition.MUST_CREATE


async def test_must_create_returns_version_one(store: Store) -> None:
    result = await store.put_if("sandbox", "a", "alpha", b"p1", {}, MUST_CREATE)
    assert result.resource_version == 1
    assert result.created_at_ms == result.updated_at_ms > 0
    record = await store.get("sandbox", "a")
    assert record is not None
    assert (record.resource_version, record.payload, record.workspace) == (1, b"p1", "default")


async def test_must_create_duplicate_id_is_unique_violation(store: Store) -> None:
    await store.put_if("sandbox", "a", "alpha", b"p1", {}, MUST_CREATE)
    with pytest.raises(UniqueViolation) as caught:
        await store.put_if("sandbox", "a", "other", b"p2", {}, MUST_CREATE)
    assert caught.value.constraint == "objects_pkey"
    # The id is unique across types too, and the original row is untouched.
    with pytest.raises(UniqueViolation):
        await store.put_if("provider", "a", "p", b"p3", {}, MUST_CREATE)
    record = await store.get("sandbox", "a")
    assert record is not None and record.payload == b"p1"


async def test_name_unique_per_type_and_workspace(store: Store) -> None:
    await store.put_if("sandbox", "a", "alpha", b"", {}, MUST_CREATE)
    with pytest.raises(UniqueViolation) as caught:
        await store.put_if("sandbox", "b", "alpha", b"", {}, MUST_CREATE)
    assert caught.value.constraint == "objects_name_uq"
    await store.put_if("provider", "c", "alpha", b"", {}, MUST_CREATE)
    await store.put_if("sandbox", "d", "alpha", b"", {}, MUST_CREATE, workspace="team-b")
    by_name = await store.get_by_name("sandbox", "alpha", "team-b")
    assert by_name is not None and by_name.id == "d"


async def test_match_version_updates_and_bumps(store: Store) -> None:
    await store.put_if("sandbox", "a", "alpha", b"p1", {}, MUST_CREATE)
    second = await store.put_if("sandbox", "a", "alpha", b"p2", {}, WriteCondition.match(1))
    third = await store.put_if("sandbox", "a", "alpha", b"p3", {}, WriteCondition.match(2))
    assert (second.resource_version, third.resource_version) == (2, 3)
    assert third.updated_at_ms >= second.updated_at_ms
    record = await store.get("sandbox", "a")
    assert record is not None and (record.payload, record.resource_version) == (b"p3", 3)
    assert record.created_at_ms == second.created_at_ms


async def test_match_version_mismatch_is_conflict_and_changes_nothing(store: Store) -> None:
    await store.put_if("sandbox", "a", "alpha", b"p1", {"k": "v"}, MUST_CREATE)
    with pytest.raises(Conflict) as caught:
        await store.put_if("sandbox", "a", "alpha", b"p2", {}, WriteCondition.match(99))
    assert caught.value.current_resource_version == 1
    record = await store.get("sandbox", "a")
    assert record is not None
    assert (record.payload, record.labels, record.resource_version) == (b"p1", {"k": "v"}, 1)


async def test_match_version_on_missing_row_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.put_if("sandbox", "nope", "n", b"", {}, WriteCondition.match(1))


def test_match_requires_a_positive_version() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        WriteCondition.match(0)


async def test_delete_if(store: Store) -> None:
    await store.put_if("sandbox", "a", "alpha", b"", {}, MUST_CREATE)
    with pytest.raises(Conflict) as caught:
        await store.delete_if("sandbox", "a", 7)
    assert caught.value.current_resource_version == 1
    assert await store.get("sandbox", "a") is not None
    assert await store.delete_if("sandbox", "a", 1) is True
    assert await store.get("sandbox", "a") is None
    assert await store.delete_if("sandbox", "a", 1) is False


async def test_concurrent_matched_updates_one_wins(store: Store) -> None:
    await store.put_if("sandbox", "a", "alpha", b"p0", {}, MUST_CREATE)

    async def write(n: int) -> bool:
        try:
            await store.put_if("sandbox", "a", "alpha", b"p%d" % n, {}, WriteCondition.match(1))
        except Conflict:
            return False
        return True

    outcomes = await asyncio.gather(*(write(n) for n in range(10)))
    assert outcomes.count(True) == 1
    record = await store.get("sandbox", "a")
    assert record is not None and record.resource_version == 2


async def test_update_message_cas_server_driven(store: Store) -> None:
    created = await store.create_message(sandbox("alpha"))
    assert created.metadata.resource_version == 1

    def make_ready(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        message.status.phase = READY
        message.status.current_policy_version = 3
        return message

    outcome = await store.update_message_cas(openshell_pb2.Sandbox, created.metadata.id, make_ready)
    assert (outcome.written, outcome.attempts) == (True, 1)
    updated = outcome.message
    assert updated.metadata.resource_version == 2
    stored = await store.get_message(openshell_pb2.Sandbox, created.metadata.id)
    assert stored is not None
    assert stored.status.phase == READY and stored.status.current_policy_version == 3
    assert stored.metadata.resource_version == 2


async def test_update_message_cas_client_driven_stale_is_conflict(store: Store) -> None:
    created = await store.create_message(sandbox("alpha"))
    calls = 0

    def mutate(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        nonlocal calls
        calls += 1
        message.status.phase = READY
        return message

    with pytest.raises(Conflict) as caught:
        await store.update_message_cas(openshell_pb2.Sandbox, created.metadata.id, mutate, 99)
    assert caught.value.current_resource_version == 1
    assert calls == 0
    updated = (
        await store.update_message_cas(openshell_pb2.Sandbox, created.metadata.id, mutate, 1)
    ).message
    assert updated.metadata.resource_version == 2


async def test_client_driven_concurrent_updates_one_wins(store: Store) -> None:
    created = await store.create_message(sandbox("alpha"))

    async def update(n: int) -> bool:
        def mutate(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
            message.spec.providers.append(f"p{n}")
            return message

        try:
            await store.update_message_cas(openshell_pb2.Sandbox, created.metadata.id, mutate, 1)
        except Conflict:
            return False
        return True

    outcomes = await asyncio.gather(*(update(n) for n in range(5)))
    assert outcomes.count(True) == 1
    stored = await store.get_message(openshell_pb2.Sandbox, created.metadata.id)
    assert stored is not None
    assert stored.metadata.resource_version == 2 and len(stored.spec.providers) == 1


async def test_server_driven_retry_is_bounded_and_reapplies(store: Store, store_url: str) -> None:
    """A mutation that always meets a concurrent writer runs exactly 5 times, then Conflict."""
    created = await store.create_message(sandbox("alpha"))
    seen_versions: list[int] = []

    def mutate(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        seen_versions.append(message.metadata.resource_version)
        raw_bump(store_url, message.metadata.id)  # someone else writes in between
        message.status.phase = READY
        return message

    with pytest.raises(Conflict) as caught:
        await store.update_message_cas(openshell_pb2.Sandbox, created.metadata.id, mutate)
    assert seen_versions == [1, 2, 3, 4, 5], "each attempt must re-read and re-apply"
    assert caught.value.current_resource_version == 6
    stored = await store.get_message(openshell_pb2.Sandbox, created.metadata.id)
    assert stored is not None and stored.status.phase != READY


async def test_retry_succeeds_after_one_conflict(store: Store, store_url: str) -> None:
    created = await store.create_message(sandbox("alpha"))
    calls = 0

    def mutate(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        nonlocal calls
        calls += 1
        if calls == 1:
            raw_bump(store_url, message.metadata.id)
        message.spec.providers.append("p")
        return message

    outcome = await store.update_message_cas(openshell_pb2.Sandbox, created.metadata.id, mutate)
    assert (outcome.written, outcome.attempts) == (True, 2)
    updated = outcome.message
    assert calls == 2
    assert updated.metadata.resource_version == 3
    assert list(updated.spec.providers) == ["p"]


async def test_aborting_mutation_writes_nothing(store: Store) -> None:
    created = await store.create_message(sandbox("alpha"))
    before = await store.get("sandbox", created.metadata.id)

    def refuse(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        message.status.phase = READY
        raise ValueError("invalid candidate")

    with pytest.raises(ValueError, match="invalid candidate"):
        await store.update_message_cas(openshell_pb2.Sandbox, created.metadata.id, refuse)
    assert await store.get("sandbox", created.metadata.id) == before


async def test_noop_mutation_keeps_version_and_updated_time(store: Store) -> None:
    created = await store.create_message(sandbox("alpha"))
    before = await store.get("sandbox", created.metadata.id)
    await asyncio.sleep(0.01)
    outcome = await store.update_message_cas(
        openshell_pb2.Sandbox, created.metadata.id, lambda message: message
    )
    assert (outcome.written, outcome.attempts) == (False, 1)
    result = outcome.message
    assert result.metadata.resource_version == 1
    assert await store.get("sandbox", created.metadata.id) == before


async def test_update_message_cas_missing_row_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.update_message_cas(openshell_pb2.Sandbox, "missing", lambda m: m)


async def test_update_message_cas_refuses_name_change(store: Store) -> None:
    created = await store.create_message(sandbox("alpha"))

    def rename(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        message.metadata.name = "beta"
        return message

    with pytest.raises(InvalidMutation, match="name"):
        await store.update_message_cas(openshell_pb2.Sandbox, created.metadata.id, rename)


async def test_labels_column_follows_the_payload(store: Store) -> None:
    created = await store.create_message(sandbox("alpha", labels={"env": "dev"}))
    record = await store.get("sandbox", created.metadata.id)
    assert record is not None and record.labels == {"env": "dev"}

    def relabel(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        message.metadata.labels["env"] = "prod"
        return message

    await store.update_message_cas(openshell_pb2.Sandbox, created.metadata.id, relabel)
    page = await store.list("sandbox", selector="env=prod")
    assert [r.id for r in page.records] == [created.metadata.id]

    def touch_status(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        message.status.phase = READY  # labels untouched: the column keeps them
        return message

    await store.update_message_cas(openshell_pb2.Sandbox, created.metadata.id, touch_status)
    record = await store.get("sandbox", created.metadata.id)
    assert record is not None and record.labels == {"env": "prod"}


async def test_messages_hydrate_the_version_from_the_column(store: Store) -> None:
    created = await store.create_message(sandbox("alpha"))
    record = await store.get("sandbox", created.metadata.id)
    assert record is not None
    stored = openshell_pb2.Sandbox.FromString(record.payload)
    assert stored.metadata.resource_version == 0, "the payload never carries the version"
    await store.put_if(
        "sandbox", record.id, record.name, record.payload, {}, WriteCondition.match(1)
    )
    by_id = await store.get_message(openshell_pb2.Sandbox, created.metadata.id)
    by_name = await store.get_message_by_name(openshell_pb2.Sandbox, "alpha")
    listed, _ = await store.list_messages(openshell_pb2.Sandbox)
    assert by_id is not None and by_name is not None
    assert by_id.metadata.resource_version == by_name.metadata.resource_version == 2
    assert [m.metadata.resource_version for m in listed] == [2]
    assert await store.get_message_by_name(openshell_pb2.Sandbox, "beta") is None


async def test_labels_column_is_written_only_when_the_mutation_changes_the_labels(
    store: Store,
) -> None:
    """A caller may keep labels in the column that the payload does not carry (a member's
    subject digest): a mutation that leaves ``metadata.labels`` alone must keep them, and
    one that empties the labels must empty the column too."""
    created = await store.create_message(sandbox("alpha"))
    record = await store.get("sandbox", created.metadata.id)
    assert record is not None
    await store.put_if(
        "sandbox",
        record.id,
        record.name,
        record.payload,
        {"subject": "d1"},
        WriteCondition.match(record.resource_version),
    )

    def ready(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        message.status.phase = READY
        return message

    await store.update_message_cas(openshell_pb2.Sandbox, created.metadata.id, ready)
    page = await store.list("sandbox", selector="subject=d1")
    assert [r.id for r in page.records] == [created.metadata.id]

    def label(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        message.metadata.labels["env"] = "dev"
        return message

    def unlabel(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        message.metadata.labels.clear()
        return message

    await store.update_message_cas(openshell_pb2.Sandbox, created.metadata.id, label)
    assert [r.id for r in (await store.list("sandbox", selector="env=dev")).records] == [
        created.metadata.id
    ]
    await store.update_message_cas(openshell_pb2.Sandbox, created.metadata.id, unlabel)
    record = await store.get("sandbox", created.metadata.id)
    assert record is not None and record.labels == {}
    assert (await store.list("sandbox", selector="env")).records == []


async def test_status_column_is_written_only_with_a_new_value(store: Store) -> None:
    created = await store.create_message(sandbox("alpha"), status="PROVISIONING")

    def phase_of(message: openshell_pb2.Sandbox) -> str | None:
        return (
            openshell_pb2.SandboxPhase.Name(message.status.phase) if message.status.phase else None
        )

    def ready(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        message.status.phase = READY
        return message

    def bump(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        message.status.current_policy_version += 1
        return message

    outcome = await store.update_message_cas(
        openshell_pb2.Sandbox, created.metadata.id, bump, status=lambda m: None
    )
    assert outcome.written
    record = await store.get("sandbox", created.metadata.id)
    assert record is not None and record.status == "PROVISIONING", "None keeps the column"
    await store.update_message_cas(
        openshell_pb2.Sandbox, created.metadata.id, ready, status=phase_of
    )
    await store.update_message_cas(
        openshell_pb2.Sandbox, created.metadata.id, bump, status=phase_of
    )
    record = await store.get("sandbox", created.metadata.id)
    assert record is not None and record.status == "SANDBOX_PHASE_READY"
    counts = await store.count_by_status("sandbox")
    assert counts == {"SANDBOX_PHASE_READY": 1}
