"""An update that starts from the row its store last wrote (written_rows.py), on both backends.

Each case puts a second writer between the remembered row and the next update, so the
remembered row is stale, and checks that the update is still decided on the current row:
the answer of a mutation, its "unchanged", and the write itself never come from the guess.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shellgate.api import openshell_pb2
from shellgate.store import Store, connect, sql
from shellgate.store.observer import CasResult
from tests.support.objects import sandbox

READY = openshell_pb2.SANDBOX_PHASE_READY
Sandbox = openshell_pb2.Sandbox


class Heard:
    """The attempts and reads a store reports."""

    def __init__(self) -> None:
        self.results: list[CasResult] = []
        self.reads = 0

    def cas_attempt(self, object_type: str, result: CasResult) -> None:
        self.results.append(result)

    def cas_call(self, object_type: str, attempts: int, exhausted: bool) -> None:
        return None

    def operation(
        self, backend: str, operation: str, seconds: float, available: bool | None
    ) -> None:
        self.reads += operation == "get"


@pytest.fixture
async def writer(store_url: str) -> AsyncIterator[tuple[Store, Heard]]:
    """The store under test, with its reports (``store`` is the other writer)."""
    heard = Heard()
    opened = await connect(store_url, observer=heard)
    yield opened, heard
    await opened.close()


def bump(message: Sandbox) -> Sandbox:
    message.status.current_policy_version += 1
    return message


async def test_a_row_this_store_wrote_is_updated_without_reading_it(
    store: Store, writer: tuple[Store, Heard]
) -> None:
    mine, heard = writer
    created = await mine.create_message(sandbox("alpha"))
    await mine.update_message_cas(Sandbox, created.metadata.id, bump)
    reads = heard.reads
    outcome = await mine.update_message_cas(Sandbox, created.metadata.id, bump)
    assert (outcome.written, outcome.attempts) == (True, 1)
    assert heard.reads == reads, "the second update read the row it had just written"
    stored = await store.get_message(Sandbox, created.metadata.id)
    assert stored is not None and stored.status.current_policy_version == 2
    assert stored.metadata.resource_version == outcome.message.metadata.resource_version == 3


async def test_a_write_by_another_store_is_not_overwritten(
    store: Store, writer: tuple[Store, Heard]
) -> None:
    mine, heard = writer
    created = await mine.create_message(sandbox("alpha"))
    await mine.update_message_cas(Sandbox, created.metadata.id, bump)  # remembered at 1
    await store.update_message_cas(Sandbox, created.metadata.id, bump)  # now 2, elsewhere
    outcome = await mine.update_message_cas(Sandbox, created.metadata.id, bump)
    assert outcome.message.status.current_policy_version == 3
    assert "stale" in heard.results, "the remembered row was not tried"
    stored = await store.get_message(Sandbox, created.metadata.id)
    assert stored is not None and stored.status.current_policy_version == 3


async def test_a_refusal_of_the_remembered_row_is_decided_again_on_the_current_one(
    store: Store, writer: tuple[Store, Heard]
) -> None:
    mine, _ = writer
    created = await mine.create_message(sandbox("alpha"))
    await mine.update_message_cas(Sandbox, created.metadata.id, bump)  # remembered PROVISIONING

    def ready(message: Sandbox) -> Sandbox:
        message.status.phase = READY
        return message

    await store.update_message_cas(Sandbox, created.metadata.id, ready)

    def only_when_ready(message: Sandbox) -> Sandbox:
        if message.status.phase != READY:
            raise RuntimeError("not ready")
        return bump(message)

    outcome = await mine.update_message_cas(Sandbox, created.metadata.id, only_when_ready)
    assert outcome.written and outcome.message.status.phase == READY


async def test_unchanged_on_the_remembered_row_is_no_answer(
    store: Store, writer: tuple[Store, Heard]
) -> None:
    mine, _ = writer
    created = await mine.create_message(sandbox("alpha"))
    await mine.update_message_cas(Sandbox, created.metadata.id, bump)  # remembered at 1

    def set_to(value: int) -> Any:
        def mutate(message: Sandbox) -> Sandbox:
            message.status.current_policy_version = value
            return message

        return mutate

    await store.update_message_cas(Sandbox, created.metadata.id, set_to(5))
    outcome = await mine.update_message_cas(Sandbox, created.metadata.id, set_to(1))
    assert outcome.written, "1 was unchanged only in the remembered row"
    stored = await store.get_message(Sandbox, created.metadata.id)
    assert stored is not None and stored.status.current_policy_version == 1


async def _created_again_at_the_same_version(store: Store, mine: Store) -> str:
    """``mine`` remembers the row at version 2; ``store`` deletes it, creates it again under
    the same id (version 1, a later creation time) and writes it once: version 2 again,
    with other content. Returns the id."""
    created = await mine.create_message(sandbox("alpha"))
    row_id = created.metadata.id
    await mine.update_message_cas(Sandbox, row_id, bump)  # version 2, counter 1, remembered
    assert await store.delete_if("sandbox", row_id, 2)
    await asyncio.sleep(0.01)  # a later millisecond for the second creation
    again = sandbox("alpha", sandbox_id=row_id)
    again.status.current_policy_version = 100
    await store.create_message(again)

    def label(message: Sandbox) -> Sandbox:
        message.metadata.labels["again"] = "yes"
        return message

    outcome = await store.update_message_cas(Sandbox, row_id, label)
    assert outcome.message.metadata.resource_version == 2
    return row_id


async def test_a_row_created_again_at_the_same_version_is_not_the_remembered_one(
    store: Store, writer: tuple[Store, Heard]
) -> None:
    mine, _ = writer
    row_id = await _created_again_at_the_same_version(store, mine)
    await mine.update_message_cas(Sandbox, row_id, bump)
    stored = await store.get_message(Sandbox, row_id)
    assert stored is not None
    assert stored.status.current_policy_version == 101, "the new row's content was lost"
    assert dict(stored.metadata.labels) == {"again": "yes"}


async def test_without_the_creation_time_in_the_condition_a_recreated_row_is_overwritten(
    store: Store, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The companion: the same sequence with ``created_at_ms`` left out of the CAS update's
    condition loses the recreated row's content."""
    original = sql.cas_write

    def without_creation_time(d: Any, labels: bool, status: bool, b: Any) -> str:
        text = original(d, labels, status, b)
        return re.sub(r"AND created_at_ms = (\S+)", r"AND (TRUE OR created_at_ms = \1)", text)

    monkeypatch.setattr(sql, "cas_write", without_creation_time)
    mine = await connect(store_url)
    try:
        row_id = await _created_again_at_the_same_version(store, mine)
        await mine.update_message_cas(Sandbox, row_id, bump)
        stored = await store.get_message(Sandbox, row_id)
        assert stored is not None and stored.status.current_policy_version == 2
    finally:
        await mine.close()


async def test_a_write_heard_on_the_change_feed_is_forgotten_before_the_next_update(
    store: Store, writer: tuple[Store, Heard]
) -> None:
    mine, heard = writer
    created = await mine.create_message(sandbox("alpha"))
    await mine.update_message_cas(Sandbox, created.metadata.id, bump)
    others = 0
    async with mine.subscribe() as feed:
        # Write elsewhere until this store hears of it (SQLite: a wildcard hint from its
        # data_version poll, whose first look may come after the first write).
        for _ in range(40):
            await store.update_message_cas(Sandbox, created.metadata.id, bump)
            others += 1
            try:
                await asyncio.wait_for(feed.get(), 0.5)
                break
            except TimeoutError:
                continue
        else:
            pytest.fail("the other store's writes were never heard")
    heard.results.clear()
    outcome = await mine.update_message_cas(Sandbox, created.metadata.id, bump)
    assert outcome.message.status.current_policy_version == 2 + others
    assert "stale" not in heard.results, "a row the feed reported changed was still tried"
