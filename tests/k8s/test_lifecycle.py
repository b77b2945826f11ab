"""Sandboxes through the gRPC API, backed by agent-sandbox objects in kmock.

One gateway process in the test's loop: the gRPC servicer, the driver watch loop and the
Kubernetes driver, with the store on SQLite and on Postgres (``store`` is parametrized). The
tests play the agent-sandbox controller by patching status onto the objects, stamping each
write with a resourceVersion because kmock assigns none.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest

from shellgate.api import openshell_pb2 as P
from shellgate.controller.gateway import wall_clock_ms
from shellgate.reconcilers.sandbox import MISSING_REASON
from tests.k8s.conftest import K8sGateway, until, until_async
from tests.support.k8s_emulator import (
    NAMESPACE,
    Revisions,
    k8s_name,
    object_url,
    resource_key,
    running_status,
    status_patch,
    suspended_status,
    suspending_status,
)
from tests.support.reconcile import resync_once

pytestmark = pytest.mark.timeout(60)


def create_request(name: str) -> P.CreateSandboxRequest:
    spec = P.SandboxSpec()
    spec.template.image = "ghcr.io/example/agent:1"
    spec.environment["MODE"] = "test"
    return P.CreateSandboxRequest(name=name, spec=spec)


async def patch_status(k8s: K8sGateway, name: str, status: dict[str, object], rv: str) -> None:
    response = await k8s.emulator.patch(object_url(k8s_name(name)), json=status_patch(status, rv))
    assert response.status == 200, await response.text()


def object_spec(k8s: K8sGateway, name: str) -> dict[str, object]:
    return dict(k8s.emulator.objects[resource_key(), NAMESPACE, k8s_name(name)].raw["spec"])


def object_gone(k8s: K8sGateway, name: str) -> bool:
    key = (resource_key(), NAMESPACE, k8s_name(name))
    return key not in k8s.emulator.objects or k8s.emulator.objects[key].deleted


async def test_a_sandbox_moves_through_every_phase(k8s: K8sGateway) -> None:
    revisions = Revisions()
    created = await k8s.stub.CreateSandbox(create_request("journey"))
    assert created.sandbox.status.phase == P.SANDBOX_PHASE_PROVISIONING
    body = k8s.emulator.objects[resource_key(), NAMESPACE, k8s_name("journey")].raw
    assert body["metadata"]["labels"]["openshell.ai/sandbox-id"] == created.sandbox.metadata.id
    (container,) = body["spec"]["podTemplate"]["spec"]["containers"]
    assert container["env"] == [{"name": "MODE", "value": "test"}]

    await patch_status(
        k8s, "journey", running_status(ready=False, reason="DependenciesNotReady"), revisions.next()
    )
    await k8s.wait_phase("journey", P.SANDBOX_PHASE_PROVISIONING)
    await patch_status(k8s, "journey", running_status(), revisions.next())
    await k8s.wait_phase("journey", P.SANDBOX_PHASE_READY)
    ready = await k8s.sandbox("journey")
    assert ready.status.agent_pod == k8s_name("journey")
    assert [(c.type, c.status) for c in ready.status.conditions][:1] == [("Ready", "True")]

    stopped = await k8s.stub.StopSandbox(P.StopSandboxRequest(name="journey"))
    assert stopped.sandbox.status.phase == P.SANDBOX_PHASE_STOPPING
    assert object_spec(k8s, "journey")["operatingMode"] == "Suspended"
    await patch_status(k8s, "journey", suspending_status(), revisions.next())
    await until_async(lambda: _applied(k8s, "journey", revisions.last))
    assert await k8s.phase_of("journey") == P.SANDBOX_PHASE_STOPPING
    await patch_status(k8s, "journey", suspended_status(), revisions.next())
    await k8s.wait_phase("journey", P.SANDBOX_PHASE_STOPPED)

    started = await k8s.stub.StartSandbox(P.StartSandboxRequest(name="journey"))
    assert started.sandbox.status.phase == P.SANDBOX_PHASE_STARTING
    assert object_spec(k8s, "journey")["operatingMode"] == "Running"
    await patch_status(k8s, "journey", running_status(), revisions.next())
    await k8s.wait_phase("journey", P.SANDBOX_PHASE_READY)

    # A finalizer holds the object, so the watch reports it deleting before it is gone.
    await k8s.emulator.patch(
        object_url(k8s_name("journey")), json={"metadata": {"finalizers": ["x/hold"]}}
    )
    deleted = await k8s.stub.DeleteSandbox(P.DeleteSandboxRequest(name="journey"))
    assert deleted.outcome == P.DELETION_OUTCOME_ACCEPTED
    assert await k8s.phase_of("journey") == P.SANDBOX_PHASE_DELETING
    await until(lambda: "deletionTimestamp" in _metadata(k8s, "journey"))
    await k8s.emulator.patch(
        object_url(k8s_name("journey")), json={"metadata": {"finalizers": None}}
    )
    await until(lambda: object_gone(k8s, "journey"))

    async def row_gone() -> bool:
        return await k8s.gateway.store.get("sandbox", created.sandbox.metadata.id) is None

    await until_async(row_gone)


def _metadata(k8s: K8sGateway, name: str) -> dict[str, object]:
    return dict(k8s.emulator.objects[resource_key(), NAMESPACE, k8s_name(name)].raw["metadata"])


async def _applied(k8s: K8sGateway, name: str, revision: str) -> bool:
    sandbox = await k8s.sandbox(name)
    return sandbox.metadata.annotations.get("openshell.ai/driver-revision") == revision


async def test_a_replayed_event_of_an_old_revision_does_not_regress_the_phase(
    k8s: K8sGateway,
) -> None:
    created = await k8s.stub.CreateSandbox(create_request("replayed"))
    old = running_status(ready=False, reason="DependenciesNotReady")
    await patch_status(k8s, "replayed", old, "5")
    await k8s.wait_phase("replayed", P.SANDBOX_PHASE_PROVISIONING)
    await patch_status(k8s, "replayed", running_status(), "6")
    await k8s.wait_phase("replayed", P.SANDBOX_PHASE_READY)
    version = (await k8s.sandbox("replayed")).metadata.resource_version
    stale_before = k8s.driver_events("stale")

    # What a relist or a lagging watch would deliver: the object as it was at revision 5.
    body = dict(k8s.emulator.objects[resource_key(), NAMESPACE, k8s_name("replayed")].raw)
    body["metadata"] = {**body["metadata"], "resourceVersion": "5"}
    body["status"] = old
    k8s.driver.handle_sandbox_event("ADDED", body)

    await until(lambda: k8s.driver_events("stale") > stale_before)
    after = await k8s.sandbox("replayed")
    assert after.status.phase == P.SANDBOX_PHASE_READY
    assert after.metadata.resource_version == version
    assert after.metadata.id == created.sandbox.metadata.id


async def test_the_sweep_notices_objects_deleted_behind_our_back(k8s: K8sGateway) -> None:
    for name in ("vanishing-ready", "vanishing-stopped"):
        await k8s.stub.CreateSandbox(create_request(name))
    await patch_status(k8s, "vanishing-ready", running_status(), "10")
    await k8s.wait_phase("vanishing-ready", P.SANDBOX_PHASE_READY)
    await k8s.stub.StopSandbox(P.StopSandboxRequest(name="vanishing-stopped"))
    await patch_status(k8s, "vanishing-stopped", suspended_status(), "11")
    await k8s.wait_phase("vanishing-stopped", P.SANDBOX_PHASE_STOPPED)
    ready_id = (await k8s.sandbox("vanishing-ready")).metadata.id

    # Gone without a watch event, as if the watch had been down when it happened.
    for name in ("vanishing-ready", "vanishing-stopped"):
        k8s.emulator.objects[resource_key(), NAMESPACE, k8s_name(name)].delete()

    k8s.gateway.clock_ms = lambda: wall_clock_ms() + 1000  # the pass starts after the writes
    counts = await resync_once(k8s.gateway, grace_seconds=0)
    assert counts == {"removed": 1, "marked_error": 1}
    assert await k8s.gateway.store.get("sandbox", ready_id) is None
    stopped = await k8s.sandbox("vanishing-stopped")
    assert stopped.status.phase == P.SANDBOX_PHASE_ERROR
    assert (stopped.status.conditions[0].type, stopped.status.conditions[0].reason) == (
        "Ready",
        MISSING_REASON,
    )
    assert await resync_once(k8s.gateway, grace_seconds=0) == {}  # nothing left to repair
    sweeps = k8s.gateway.metrics.registry.get_sample_value(
        "shellgate_reconcile_total", {"controller": "sandbox", "result": "removed"}
    )
    assert sweeps == 1


async def test_a_name_taken_in_the_cluster_is_already_exists_and_leaves_no_row(
    k8s: K8sGateway,
) -> None:
    k8s.emulator.objects[resource_key(), NAMESPACE, k8s_name("squatted")] = {
        "apiVersion": "agents.x-k8s.io/v1beta1",
        "kind": "Sandbox",
        "metadata": {"name": k8s_name("squatted"), "namespace": NAMESPACE},
    }
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await k8s.stub.CreateSandbox(create_request("squatted"))
    assert failure.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await k8s.stub.GetSandbox(P.GetSandboxRequest(name="squatted"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_sandbox_streams_status_and_kubernetes_events(k8s: K8sGateway) -> None:
    await k8s.stub.CreateSandbox(create_request("followed"))
    received: list[P.SandboxStreamEvent] = []
    async with _streaming(k8s, "followed", received):
        await until(lambda: len(received) >= 1)
        await k8s.emulator.post(
            f"/api/v1/namespaces/{NAMESPACE}/events",
            json={
                "metadata": {"name": "ev-1", "namespace": NAMESPACE, "uid": "ev-1"},
                "involvedObject": {"kind": "Pod", "name": k8s_name("followed"), "apiVersion": "v1"},
                "type": "Warning",
                "reason": "BackOff",
                "message": "Back-off pulling image",
                "count": 3,
                "lastTimestamp": "2026-05-01T10:00:02Z",
            },
        )
        await patch_status(k8s, "followed", running_status(), "20")
        await until(lambda: any(_is_ready(e) for e in received))
        await until(lambda: any(e.HasField("event") for e in received))
    event = next(e.event for e in received if e.HasField("event"))
    assert (event.type, event.reason, event.message) == (
        "Warning",
        "BackOff",
        "Back-off pulling image",
    )
    assert event.metadata["count"] == "3"


def _is_ready(event: P.SandboxStreamEvent) -> bool:
    return event.HasField("sandbox") and event.sandbox.status.phase == P.SANDBOX_PHASE_READY


@contextlib.asynccontextmanager
async def _streaming(
    k8s: K8sGateway, name: str, into: list[P.SandboxStreamEvent]
) -> AsyncIterator[None]:
    call = k8s.stub.WatchSandbox(
        P.WatchSandboxRequest(sandbox=name, follow_status=True, follow_events=True)
    )

    async def read() -> None:
        async for item in call:
            into.append(item)

    task = asyncio.create_task(read())
    try:
        yield
    finally:
        call.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await task
