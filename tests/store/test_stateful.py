"""A hypothesis state machine drives the store and an in-memory model side by side.

After every step the store must agree with the model: versions, payloads and errors. It runs
on both backends; on Postgres each example starts from an emptied table.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from shellgate.api import openshell_pb2
from shellgate.store import Conflict, NotFound, Store, UniqueViolation, WriteCondition, connect
from tests.support.objects import sandbox

IDS = st.sampled_from(["a", "b", "c"])
NAMES = st.sampled_from(["n1", "n2", "n3"])


def counter_of(payload: bytes) -> int:
    return openshell_pb2.Sandbox.FromString(payload).status.current_policy_version


class StoreModel(RuleBasedStateMachine):
    """Model: id -> [name, resource_version, counter]."""

    loop: asyncio.AbstractEventLoop
    store: Store

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, list[Any]] = {}
        self.run(self.store.list("sandbox", workspace=None, limit=1000))
        self.run(self._empty())

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    async def _empty(self) -> None:
        page = await self.store.list("sandbox", workspace=None, limit=1000)
        for record in page.records:
            await self.store.delete_if("sandbox", record.id, record.resource_version)

    @rule(object_id=IDS, name=NAMES)
    def create(self, object_id: str, name: str) -> None:
        taken = object_id in self.model or any(v[0] == name for v in self.model.values())
        try:
            created = self.run(self.store.create_message(sandbox(name, sandbox_id=object_id)))
        except UniqueViolation:
            assert taken
            return
        assert not taken
        assert created.metadata.resource_version == 1
        self.model[object_id] = [name, 1, 0]

    @rule(object_id=IDS, stale=st.booleans(), value=st.integers(0, 1000))
    def put_if_match(self, object_id: str, stale: bool, value: int) -> None:
        known = self.model.get(object_id)
        expected = (known[1] + (7 if stale else 0)) if known else 1
        message = sandbox(known[0] if known else "x", sandbox_id=object_id)
        message.status.current_policy_version = value
        payload = message.SerializeToString()
        condition = WriteCondition.match(expected)
        try:
            result = self.run(self.store.put_if("sandbox", object_id, None, payload, {}, condition))
        except NotFound:
            assert known is None
            return
        except Conflict as conflict:
            assert known is not None and stale
            assert conflict.current_resource_version == known[1]
            return
        assert known is not None and not stale
        assert result.resource_version == known[1] + 1
        known[1:] = [result.resource_version, value]

    @rule(object_id=IDS, delta=st.integers(0, 3))
    def update_message_cas(self, object_id: str, delta: int) -> None:
        def add(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
            message.status.current_policy_version += delta
            return message

        known = self.model.get(object_id)
        try:
            outcome = self.run(self.store.update_message_cas(openshell_pb2.Sandbox, object_id, add))
        except NotFound:
            assert known is None
            return
        assert known is not None
        if delta:
            known[1:] = [known[1] + 1, known[2] + delta]
        assert outcome.written is bool(delta)
        assert outcome.message.metadata.resource_version == known[1]
        assert outcome.message.status.current_policy_version == known[2]

    @rule(object_id=IDS, stale=st.booleans())
    def delete_if(self, object_id: str, stale: bool) -> None:
        known = self.model.get(object_id)
        expected = (known[1] + 1) if (known and stale) else (known[1] if known else 1)
        try:
            deleted = self.run(self.store.delete_if("sandbox", object_id, expected))
        except Conflict as conflict:
            assert known is not None and stale
            assert conflict.current_resource_version == known[1]
            return
        assert deleted is (known is not None)
        self.model.pop(object_id, None)

    @invariant()
    def store_matches_model(self) -> None:
        page = self.run(self.store.list("sandbox", limit=1000))
        actual = {r.id: [r.name, r.resource_version, counter_of(r.payload)] for r in page.records}
        assert actual == self.model


def run_machine(url: str, examples: int) -> None:
    loop = asyncio.new_event_loop()
    try:
        store = loop.run_until_complete(connect(url))
        StoreModel.loop = loop
        StoreModel.store = store
        try:
            test = StoreModel.TestCase
            test.settings = settings(
                max_examples=examples,
                stateful_step_count=20,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            )
            test().runTest()
        finally:
            loop.run_until_complete(store.close())
    finally:
        loop.close()


def test_store_agrees_with_model_sqlite(tmp_path: Any) -> None:
    run_machine(f"sqlite:///{tmp_path / 'model.db'}", examples=60)


@pytest.mark.postgres
def test_store_agrees_with_model_postgres(pg_dsn: str) -> None:
    run_machine(pg_dsn, examples=40)
