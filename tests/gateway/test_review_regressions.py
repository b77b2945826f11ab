"""Regressions found in review: failed fences, a stuck intent, the database's created time."""

from __future__ import annotations

import grpc
import pytest

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.controller.drivers.base import DriverError
from shellgate.reconcilers import sandbox as sandbox_rules
from shellgate.store import StoreUnavailable
from tests.k8s.conftest import until
from tests.support.gateway import Running

P = openshell_pb2


async def test_an_attach_whose_fence_fails_leaves_nothing_attached(
    gw: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = datamodel_pb2.Provider(type="github", credentials={"T": "x"})
    provider.metadata.name = "gh"
    await gw.stub.CreateProvider(P.CreateProviderRequest(provider=provider))
    await gw.stub.CreateSandbox(P.CreateSandboxRequest(name="alpha", spec=P.SandboxSpec()))

    async def store_blip(*_args: object) -> None:
        raise StoreUnavailable("injected: the database went away during the fence")

    monkeypatch.setattr(gw.gateway.repos.providers, "fence", store_blip)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.AttachSandboxProvider(
            P.AttachSandboxProviderRequest(sandbox="alpha", provider="gh")
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    stored = await gw.gateway.store.get_message_by_name(P.Sandbox, "alpha")
    assert stored is not None and list(stored.spec.providers) == []
    # So a DeleteProvider now may (and does) succeed without leaving a dangling reference.
    deleted = await gw.stub.DeleteProvider(P.DeleteProviderRequest(name="gh"))
    assert deleted.outcome == P.DELETION_OUTCOME_COMPLETED


async def test_one_failing_driver_call_does_not_stall_the_others(gw: Running) -> None:
    """An owner replica follows STOPPING rows through reconcile; a driver call that keeps
    failing for one sandbox is retried with backoff and never holds up another."""
    store = gw.gateway.store
    for name in ("a", "b"):
        await gw.stub.CreateSandbox(P.CreateSandboxRequest(name=name, spec=P.SandboxSpec()))
    stopped: list[str] = []
    failed: list[str] = []
    ids: dict[str, str] = {}

    async def stop(sandbox_id: str) -> None:
        if sandbox_id == ids["a"]:
            failed.append(sandbox_id)
            raise DriverError("injected: a cannot be stopped")
        stopped.append(sandbox_id)

    gw.driver.stop_sandbox = stop  # type: ignore[method-assign]
    gw.driver.routes_by_owner = True  # the owner acts on intents it reads from the store
    for name, mutation in (("a", sandbox_rules.begin_stop()), ("b", sandbox_rules.begin_stop())):
        record = await store.get_by_name("sandbox", name)
        assert record is not None
        ids[name] = record.id
        await store.update_message_cas(P.Sandbox, record.id, mutation)
    await until(lambda: bool(stopped) and len(failed) >= 2)
    assert set(stopped) == {ids["b"]}
    retries = gw.gateway.metrics.registry.get_sample_value(
        "shellgate_workqueue_retries_total", {"queue": "sandbox"}
    )
    assert retries is not None and retries >= 1


async def test_created_time_is_the_database_insert_time(gw: Running) -> None:
    created = (
        await gw.stub.CreateSandbox(P.CreateSandboxRequest(name="alpha", spec=P.SandboxSpec()))
    ).sandbox
    record = await gw.gateway.store.get("sandbox", created.metadata.id)
    assert record is not None
    assert created.metadata.created_time.ToMilliseconds() == record.created_at_ms
    got = (await gw.stub.GetSandbox(P.GetSandboxRequest(name="alpha"))).sandbox
    assert got.metadata.created_time.ToMilliseconds() == record.created_at_ms
