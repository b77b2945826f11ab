"""Races across OS processes: nothing acknowledged is lost, and creates have one winner.

Each worker process opens its own store on the same database (a real SQLite file shared by
processes, or one Postgres database), the way several gateway replicas would.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Callable
from typing import Any

import pytest

from shellgate.api import openshell_pb2
from shellgate.store import Conflict, Store, UniqueViolation, connect
from tests.support.objects import sandbox

pytestmark = pytest.mark.slow

PROCESSES = 3
TASKS_PER_PROCESS = 8
INCREMENTS_PER_TASK = 50


def _run_in_processes(target: Callable[..., Any], args: list[tuple[Any, ...]]) -> list[Any]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(len(args)) as pool:
        return pool.starmap(target, args)


def _increment_worker(url: str, sandbox_id: str) -> list[int]:
    """8 tasks each increment the counter 50 times; returns every version a call returned."""

    def increment(message: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        message.status.current_policy_version += 1
        return message

    async def task(store: Store) -> list[int]:
        versions = []
        for _ in range(INCREMENTS_PER_TASK):
            while True:
                try:
                    outcome = await store.update_message_cas(
                        openshell_pb2.Sandbox, sandbox_id, increment
                    )
                except Conflict:
                    continue  # retries ran out: call again, as a client would
                versions.append(outcome.message.metadata.resource_version)
                break
        return versions

    async def run() -> list[int]:
        store = await connect(url)
        try:
            results = await asyncio.gather(*(task(store) for _ in range(TASKS_PER_PROCESS)))
        finally:
            await store.close()
        return [version for versions in results for version in versions]

    return asyncio.run(run())


async def test_no_lost_updates_across_processes(store: Store, store_url: str) -> None:
    created = await store.create_message(sandbox("counter"))
    sandbox_id = created.metadata.id
    per_process = await asyncio.to_thread(
        _run_in_processes, _increment_worker, [(store_url, sandbox_id)] * PROCESSES
    )
    versions = [version for chunk in per_process for version in chunk]
    total = PROCESSES * TASKS_PER_PROCESS * INCREMENTS_PER_TASK
    assert len(versions) == total == 1200
    assert len(set(versions)) == total, "two successful calls returned the same version"
    final = await store.get_message(openshell_pb2.Sandbox, sandbox_id)
    assert final is not None
    assert final.status.current_policy_version == total
    assert final.metadata.resource_version == total + 1
    assert sorted(versions) == list(range(2, total + 2))


def _create_worker(url: str, attempts: int, start: asyncio.Event | None = None) -> list[str]:
    async def create_one(store: Store) -> str:
        try:
            await store.create_message(sandbox("contested"))
        except UniqueViolation as exc:
            return f"unique:{exc.constraint}"
        return "created"

    async def run() -> list[str]:
        store = await connect(url)
        try:
            return list(await asyncio.gather(*(create_one(store) for _ in range(attempts))))
        finally:
            await store.close()

    return asyncio.run(run())


async def test_must_create_race_has_one_winner(store: Store, store_url: str) -> None:
    outcomes_per_process = await asyncio.to_thread(
        _run_in_processes, _create_worker, [(store_url, 10), (store_url, 10)]
    )
    outcomes = [outcome for chunk in outcomes_per_process for outcome in chunk]
    assert outcomes.count("created") == 1
    assert outcomes.count("unique:objects_name_uq") == 19
    page = await store.list("sandbox")
    assert [record.name for record in page.records] == ["contested"]
