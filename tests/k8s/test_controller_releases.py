"""The gateway, the driver and kmock, with the test playing each agent-sandbox release.

Everything runs for real except the controller: requests go through gRPC, the store (SQLite
and Postgres), the reconcile loops, the driver and kmock. ``PlayedController`` reads the
object the driver wrote, bumps ``metadata.generation`` when the spec changed (kube-apiserver
does that; kmock does not) and writes the status the chosen release would
(``tests/support/agent_sandbox_model.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from kmock import KubernetesEmulator

from shellgate.api import datamodel_pb2 as D
from shellgate.api import openshell_pb2 as P
from shellgate.controller.reconcile.sandboxes import SandboxReconciler
from shellgate.reconcilers.pod_policy import PodSettings
from shellgate.store import Store
from shellgate.store.connect import connect
from tests.k8s.conftest import K8sGateway, running_k8s_gateway, until
from tests.support.agent_sandbox_model import ModelController, PodState, Release
from tests.support.k8s_emulator import NAMESPACE, k8s_name, object_url, resource_key
from tests.support.reconcile import resync_once

pytestmark = pytest.mark.timeout(60)

V1ALPHA1 = pytest.mark.parametrize("emulator_versions", [("v1alpha1",)], indirect=True)


def create_request(name: str, workspace: str = "") -> P.CreateSandboxRequest:
    spec = P.SandboxSpec()
    spec.template.image = "ghcr.io/example/agent:1"
    scope = D.WorkspaceSelector(workspace=workspace) if workspace else None
    return P.CreateSandboxRequest(name=name, spec=spec, workspace_scope=scope)


class PlayedController:
    """One release of the agent-sandbox controller, played on kmock's copy of an object."""

    def __init__(self, k8s: K8sGateway, release: Release, name: str) -> None:
        self.k8s = k8s
        self.version = "v1alpha1" if release == "v0.4" else "v1beta1"
        self.name = k8s_name(name)
        self.model = ModelController(release, {"metadata": {"generation": 1}})
        self._spec: dict[str, Any] | None = None

    def _stored(self) -> dict[str, Any]:
        key = (resource_key(self.version), NAMESPACE, self.name)
        return dict(self.k8s.emulator.objects[key].raw)

    def _take_spec(self) -> None:
        """What the API server does on a write: a changed spec is a new generation."""
        stored = self._stored()
        body = self.model.body
        body["apiVersion"] = stored["apiVersion"]
        if self._spec is not None and stored["spec"] != self._spec:
            body["metadata"]["generation"] += 1
        self._spec = dict(stored["spec"])
        body["spec"] = dict(stored["spec"])

    async def _publish(self, body: dict[str, Any]) -> None:
        """The controller replaces the whole status (an update, not a merge): fields it no
        longer writes go, which a merge patch must say with null."""
        status = {"replicas": None, "podIPs": None, **body["status"]}
        patch = {
            "metadata": {
                "generation": body["metadata"]["generation"],
                "resourceVersion": body["metadata"]["resourceVersion"],
            },
            "status": status,
        }
        response = await self.k8s.emulator.patch(
            object_url(self.name, version=self.version), json=patch
        )
        assert response.status == 200, await response.text()

    async def reconcile(self) -> None:
        self._take_spec()
        await self._publish(self.model.reconcile())

    async def pod(self, state: PodState) -> None:
        self._take_spec()
        await self._publish(self.model.set_pod(state))

    async def pod_gone(self) -> None:
        self._take_spec()
        await self._publish(self.model.pod_gone())

    async def until_spec(self, key: str, value: object) -> None:
        await until(lambda: self._stored()["spec"].get(key) == value)


async def ready(k8s: K8sGateway, controller: PlayedController, name: str) -> None:
    await k8s.stub.CreateSandbox(create_request(name))
    await controller.reconcile()
    await k8s.wait_phase(name, P.SANDBOX_PHASE_PROVISIONING)
    await controller.pod("ready")
    await k8s.wait_phase(name, P.SANDBOX_PHASE_READY)


async def test_v0_5_0_start_after_stop_reaches_ready(k8s: K8sGateway) -> None:
    controller = PlayedController(k8s, "v0.5.0", "resumed")
    await ready(k8s, controller, "resumed")
    await k8s.stub.StopSandbox(P.StopSandboxRequest(name="resumed"))
    await k8s.wait_phase("resumed", P.SANDBOX_PHASE_STOPPING)
    await controller.until_spec("operatingMode", "Suspended")
    await controller.reconcile()
    await k8s.wait_phase("resumed", P.SANDBOX_PHASE_STOPPED)
    await controller.pod_gone()
    await k8s.stub.StartSandbox(P.StartSandboxRequest(name="resumed"))
    await controller.until_spec("operatingMode", "Running")
    await controller.reconcile()
    assert await k8s.phase_of("resumed") == P.SANDBOX_PHASE_STARTING
    await controller.pod("ready")
    await k8s.wait_phase("resumed", P.SANDBOX_PHASE_READY)
    stale = [c for c in (await k8s.sandbox("resumed")).status.conditions if c.type == "Suspended"]
    assert [(c.status, c.reason) for c in stale] == [("True", "PodTerminated")]  # never cleared


@V1ALPHA1
async def test_v0_4_stop_finishes_and_start_waits_for_the_new_pod(k8s: K8sGateway) -> None:
    controller = PlayedController(k8s, "v0.4", "old")
    await ready(k8s, controller, "old")
    await k8s.stub.StopSandbox(P.StopSandboxRequest(name="old"))
    await controller.until_spec("replicas", 0)
    await controller.reconcile()  # Ready=True "replicas is 0", status.replicas omitted
    await k8s.wait_phase("old", P.SANDBOX_PHASE_STOPPED)
    await controller.pod_gone()
    await k8s.stub.StartSandbox(P.StartSandboxRequest(name="old"))
    await controller.until_spec("replicas", 1)
    await controller.reconcile()
    assert await k8s.phase_of("old") == P.SANDBOX_PHASE_STARTING  # not the stale Ready=True
    await controller.pod("ready")
    await k8s.wait_phase("old", P.SANDBOX_PHASE_READY)


@pytest.mark.parametrize("release", ["v0.5.0", "v0.5.4"])
async def test_start_after_an_eviction_runs_a_new_pod(k8s: K8sGateway, release: Release) -> None:
    controller = PlayedController(k8s, release, "evicted")
    await ready(k8s, controller, "evicted")
    await controller.pod("failed")
    await k8s.wait_phase("evicted", P.SANDBOX_PHASE_ERROR)
    await k8s.stub.StartSandbox(P.StartSandboxRequest(name="evicted"))
    await controller.until_spec("operatingMode", "Suspended")  # the ended pod goes first
    await controller.reconcile()
    await controller.pod_gone()
    await controller.until_spec("operatingMode", "Running")  # then the start goes on
    await controller.reconcile()
    assert await k8s.phase_of("evicted") == P.SANDBOX_PHASE_STARTING
    await controller.pod("ready")
    await k8s.wait_phase("evicted", P.SANDBOX_PHASE_READY)


async def test_a_refused_pod_is_error_after_the_provisioning_deadline(k8s: K8sGateway) -> None:
    controller = PlayedController(k8s, "v0.5.4", "refused")
    controller.model.refusal = 'pods "x" is forbidden: violates PodSecurity "restricted:latest"'
    await k8s.stub.CreateSandbox(create_request("refused"))
    await controller.reconcile()
    await k8s.wait_phase("refused", P.SANDBOX_PHASE_PROVISIONING)
    deadline = SandboxReconciler(k8s.gateway, provisioning_deadline_seconds=60)
    clock = k8s.gateway.clock_ms
    await resync_once(k8s.gateway, reconciler=deadline)
    stamped = await k8s.sandbox("refused")
    assert stamped.status.phase == P.SANDBOX_PHASE_PROVISIONING
    assert stamped.status.provisioning.HasField("deadline")
    k8s.gateway.clock_ms = lambda: clock() + 61_000
    deadline = SandboxReconciler(k8s.gateway, provisioning_deadline_seconds=60)
    assert await resync_once(k8s.gateway, reconciler=deadline) == {"deadline_exceeded": 1}
    failed = await k8s.sandbox("refused")
    assert failed.status.phase == P.SANDBOX_PHASE_ERROR
    ready_condition = failed.status.conditions[0]
    assert (ready_condition.type, ready_condition.reason) == ("Ready", "ReconcilerError")
    assert "violates PodSecurity" in ready_condition.message


async def test_the_same_name_in_two_workspaces_gets_two_objects(k8s: K8sGateway) -> None:
    for workspace in ("team-a", "team-b"):
        await k8s.stub.CreateSandbox(create_request("box", workspace))
    names = {key[2] for key in k8s.emulator.objects if key[0] == resource_key()}
    assert {"team-a--box", "team-b--box"} <= names


async def test_reserved_template_labels_are_invalid_and_leave_nothing(k8s: K8sGateway) -> None:
    request = create_request("sneaky")
    request.spec.template.labels["agents.x-k8s.io/adoptable"] = "true"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await k8s.stub.CreateSandbox(request)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "reserved prefix" in str(refused.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await k8s.sandbox("sneaky")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert not [key for key in k8s.emulator.objects if key[0] == resource_key()]


async def test_an_object_named_before_workspaces_is_still_stopped_and_deleted(
    k8s: K8sGateway,
) -> None:
    """An upgrade: the object has the bare sandbox name and no gateway id."""
    created = await k8s.stub.CreateSandbox(create_request("legacy"))
    sandbox_id = created.sandbox.metadata.id
    current = dict(k8s.emulator.objects[resource_key(), NAMESPACE, k8s_name("legacy")].raw)
    k8s.emulator.objects[resource_key(), NAMESPACE, k8s_name("legacy")].delete()
    labels = {"openshell.ai/sandbox-id": sandbox_id, "openshell.ai/managed-by": "shellgate"}
    k8s.emulator.objects[resource_key(), NAMESPACE, "legacy"] = {
        **current,
        "metadata": {"name": "legacy", "namespace": NAMESPACE, "labels": labels},
    }
    assert await k8s.driver.list_sandboxes() == []  # never swept as an orphan
    found = await k8s.driver.get_sandbox(sandbox_id)
    assert found is not None and found.sandbox_id == sandbox_id
    await k8s.stub.StopSandbox(P.StopSandboxRequest(name="legacy"))
    await until(
        lambda: (
            k8s.emulator.objects[resource_key(), NAMESPACE, "legacy"]
            .raw["spec"]
            .get("operatingMode")
            == "Suspended"
        )
    )
    await k8s.stub.DeleteSandbox(P.DeleteSandboxRequest(name="legacy"))
    await until(lambda: k8s.emulator.objects[resource_key(), NAMESPACE, "legacy"].deleted)


@contextlib.asynccontextmanager
async def installation(
    store: Store, emulator: KubernetesEmulator, gateway_id: str
) -> AsyncIterator[K8sGateway]:
    async with running_k8s_gateway(
        store, emulator, pod_settings=PodSettings(gateway_id=gateway_id)
    ) as running:
        yield running


async def test_two_installations_in_one_namespace_leave_each_other_alone(
    store: Store, emulator: KubernetesEmulator, tmp_path: Path
) -> None:
    green_store = await connect(f"sqlite:///{tmp_path}/green.db")  # its own database
    async with (
        installation(store, emulator, "blue") as blue,
        installation(green_store, emulator, "green") as green,
    ):
        await blue.stub.CreateSandbox(create_request("shared-name"))
        key = (resource_key(), NAMESPACE, k8s_name("shared-name"))
        assert emulator.objects[key].raw["metadata"]["labels"]["openshell.ai/gateway-id"] == (
            "blue"
        )
        listed = await green.driver.list_sandboxes()
        assert listed == []
        assert await resync_once(green.gateway, grace_seconds=0) == {}  # no orphan to delete
        assert not emulator.objects[key].deleted
        with pytest.raises(grpc.aio.AioRpcError) as taken:
            await green.stub.CreateSandbox(create_request("shared-name"))
        assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert [s.sandbox_id for s in await blue.driver.list_sandboxes()] == [
            (await blue.sandbox("shared-name")).metadata.id
        ]
    await green_store.close()


async def test_v0_5_0_a_start_waits_while_the_old_pod_still_exists(k8s: K8sGateway) -> None:
    """v0.5.0-v0.5.3 confirm a stop before the evicted pod is gone; the start must wait."""
    controller = PlayedController(k8s, "v0.5.0", "lingering")
    await ready(k8s, controller, "lingering")
    await controller.pod("failed")
    await k8s.wait_phase("lingering", P.SANDBOX_PHASE_ERROR)
    pod_url = f"/api/v1/namespaces/{NAMESPACE}/pods/{k8s_name('lingering')}"
    posted = await k8s.emulator.post(
        f"/api/v1/namespaces/{NAMESPACE}/pods",
        json={"metadata": {"name": k8s_name("lingering"), "namespace": NAMESPACE}},
    )
    assert posted.status in (200, 201)
    controller.model.linger = True
    await k8s.stub.StartSandbox(P.StartSandboxRequest(name="lingering"))
    await controller.until_spec("operatingMode", "Suspended")
    await controller.reconcile()  # confirms the stop although the pod is still there
    await until(lambda: any(r.url.path == pod_url for r in k8s.emulator))  # the driver looked
    assert controller.model.body["spec"]["operatingMode"] == "Suspended"  # and waited
    assert await k8s.phase_of("lingering") == P.SANDBOX_PHASE_STARTING
    await k8s.emulator.delete(pod_url)
    await controller.pod_gone()
    await resync_once(k8s.gateway, stuck_seconds=0)  # the resync re-issues the start
    await controller.until_spec("operatingMode", "Running")
    await controller.reconcile()
    await controller.pod("ready")
    await k8s.wait_phase("lingering", P.SANDBOX_PHASE_READY)
