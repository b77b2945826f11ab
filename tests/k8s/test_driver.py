"""The Kubernetes driver against kmock: the objects and patches it sends, what it reads back.

No store here: these tests call the driver directly and read its ``events()`` stream.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import kmock
import pytest
from kmock import KubernetesEmulator

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.base import (
    DeletedEvent,
    DriverConflict,
    DriverError,
    DriverEvent,
    PlatformEvent,
    SnapshotEvent,
)
from shellgate.controller.drivers.kubernetes import KubernetesDriver
from shellgate.controller.drivers.kubernetes import watch as kopf_watch
from shellgate.controller.drivers.kubernetes.client import (
    DRIVER_USER_AGENT,
    WATCH_USER_AGENT,
    configuration_for,
    fixed_login,
)
from tests.k8s.conftest import FAST_BACKOFFS, make_driver, until
from tests.support.k8s_emulator import (
    NAMESPACE,
    Revisions,
    collection_url,
    k8s_name,
    object_url,
    resource_key,
    running_status,
    status_patch,
)
from tests.support.objects import sandbox as sandbox_message
from tests.support.proxy import TcpProxy

pytestmark = pytest.mark.timeout(30)


def stored(emulator: KubernetesEmulator, name: str, version: str = "v1beta1") -> dict[str, Any]:
    return dict(emulator.objects[resource_key(version), NAMESPACE, k8s_name(name)].raw)


def requests_of(emulator: KubernetesEmulator, method: str) -> list[kmock.Request]:
    return [r for r in emulator if str(r.method).upper().endswith(method)]


def from_us(request: kmock.Request) -> bool:
    """Sent by the driver itself (kopf's requests say ``shellgate/watch``)."""
    return request.headers.get("User-Agent") == DRIVER_USER_AGENT


@contextlib.asynccontextmanager
async def collected(driver: KubernetesDriver) -> AsyncIterator[list[DriverEvent]]:
    """Every driver event while the block runs, collected in the background."""
    seen: list[DriverEvent] = []

    async def collect() -> None:
        async for event in driver.events():
            seen.append(event)

    task = asyncio.create_task(collect())
    await asyncio.sleep(0)
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def full_sandbox(name: str = "sb-full") -> openshell_pb2.Sandbox:
    message = sandbox_message(name)
    spec = message.spec
    spec.template.image = "ghcr.io/example/agent:2"
    spec.template.environment["SHARED"] = "template"
    spec.template.environment["ONLY_TEMPLATE"] = "t"
    spec.template.labels["team"] = "infra"
    spec.template.annotations["note"] = "hello"
    spec.template.runtime_class_name = "gvisor"
    spec.template.resources.update({"limits": {"cpu": "2", "memory": "1Gi"}})
    spec.environment["SHARED"] = "spec"
    spec.command.extend(["python", "-m", "agent"])
    spec.resource_requirements.gpu.count = 1
    return message


# ---- discovery and create -----------------------------------------------------------------------


async def test_create_posts_a_sandbox_built_from_the_spec(
    driver: KubernetesDriver, emulator: KubernetesEmulator
) -> None:
    message = full_sandbox()
    await driver.create_sandbox(message)
    body = stored(emulator, "sb-full")
    assert driver.version == "v1beta1"
    assert body["apiVersion"] == "agents.x-k8s.io/v1beta1"
    assert body["kind"] == "Sandbox"
    assert body["metadata"]["name"] == "default--sb-full"
    assert body["metadata"]["labels"] == {
        "openshell.ai/sandbox-id": message.metadata.id,
        "openshell.ai/managed-by": "shellgate",
        "openshell.ai/gateway-id": "shellgate",
    }
    assert body["spec"]["operatingMode"] == "Running"
    template = body["spec"]["podTemplate"]
    assert template["metadata"]["labels"]["team"] == "infra"
    assert template["metadata"]["labels"]["openshell.ai/sandbox-id"] == message.metadata.id
    assert template["metadata"]["annotations"] == {"note": "hello"}
    assert template["spec"]["runtimeClassName"] == "gvisor"
    (container,) = template["spec"]["containers"]
    assert container["image"] == "ghcr.io/example/agent:2"
    assert container["command"] == ["python", "-m", "agent"]
    assert container["env"] == [
        {"name": "ONLY_TEMPLATE", "value": "t"},
        {"name": "SHARED", "value": "spec"},
    ]
    assert container["resources"] == {
        "limits": {"cpu": "2", "memory": "1Gi", "nvidia.com/gpu": "1"}
    }
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    assert template["spec"]["restartPolicy"] == "Never"
    assert template["spec"]["automountServiceAccountToken"] is False
    assert template["spec"]["securityContext"] == {
        "runAsNonRoot": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


async def test_create_uses_the_default_image_and_fails_without_any(
    emulator: KubernetesEmulator,
) -> None:
    url = str(emulator.url).rstrip("/")
    with_default = make_driver(url, image="registry.example/default:3")
    without = make_driver(url, image="")
    try:
        await with_default.start()
        await without.start()
        await with_default.create_sandbox(sandbox_message("plain"))
        (container,) = stored(emulator, "plain")["spec"]["podTemplate"]["spec"]["containers"]
        assert container == {
            "name": "sandbox",
            "image": "registry.example/default:3",
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "capabilities": {"drop": ["ALL"]},
            },
        }
        with pytest.raises(DriverError, match="no image"):
            await without.create_sandbox(sandbox_message("imageless"))
    finally:
        await with_default.close()
        await without.close()


async def test_create_is_idempotent_for_the_same_sandbox_id(
    driver: KubernetesDriver, emulator: KubernetesEmulator
) -> None:
    message = sandbox_message("twice")
    await driver.create_sandbox(message)
    await driver.create_sandbox(message)  # 409 from the server, then our own id: success
    assert len([r for r in requests_of(emulator, "POST") if from_us(r)]) == 2
    assert stored(emulator, "twice")["metadata"]["labels"]["openshell.ai/sandbox-id"] == (
        message.metadata.id
    )


async def test_a_name_taken_by_another_sandbox_or_object_is_a_conflict(
    driver: KubernetesDriver, emulator: KubernetesEmulator
) -> None:
    first = sandbox_message("taken")
    await driver.create_sandbox(first)
    with pytest.raises(DriverConflict, match=first.metadata.id):
        await driver.create_sandbox(sandbox_message("taken"))
    emulator.objects[resource_key(), NAMESPACE, k8s_name("foreign")] = {
        "apiVersion": "agents.x-k8s.io/v1beta1",
        "kind": "Sandbox",
        "metadata": {"name": k8s_name("foreign"), "namespace": NAMESPACE},
    }
    with pytest.raises(DriverConflict, match="does not manage"):
        await driver.create_sandbox(sandbox_message("foreign"))


@pytest.mark.parametrize("emulator_versions", [("v1alpha1",)], indirect=True)
async def test_v1alpha1_fallback_uses_replicas(
    driver: KubernetesDriver, emulator: KubernetesEmulator
) -> None:
    message = sandbox_message("old-api")
    await driver.create_sandbox(message)
    assert driver.version == "v1alpha1"
    body = stored(emulator, "old-api", "v1alpha1")
    assert body["apiVersion"] == "agents.x-k8s.io/v1alpha1"
    assert body["spec"]["replicas"] == 1
    assert "operatingMode" not in body["spec"]
    await driver.stop_sandbox(message.metadata.id)
    assert stored(emulator, "old-api", "v1alpha1")["spec"]["replicas"] == 0
    await driver.start_sandbox(message.metadata.id)
    assert stored(emulator, "old-api", "v1alpha1")["spec"]["replicas"] == 1


@pytest.mark.parametrize("emulator_versions", [("v1alpha1", "v1beta1")], indirect=True)
async def test_discovery_prefers_v1beta1(driver: KubernetesDriver) -> None:
    assert driver.version == "v1beta1"


async def test_start_fails_clearly_without_agent_sandbox(kmock: KubernetesEmulator) -> None:
    kmock.resources.load_bundled()
    driver = make_driver(str(kmock.url).rstrip("/"))
    try:
        with pytest.raises(DriverError, match=r"agents\.x-k8s\.io"):
            await driver.start()
    finally:
        await driver.close()


# ---- stop, start, delete ------------------------------------------------------------------------


async def test_stop_and_start_patch_the_operating_mode_with_the_version_read(
    driver: KubernetesDriver, emulator: KubernetesEmulator
) -> None:
    message = sandbox_message("lifecycle")
    await driver.create_sandbox(message)
    await emulator.patch(
        object_url(k8s_name("lifecycle")), json={"metadata": {"resourceVersion": "7"}}
    )

    await driver.stop_sandbox(message.metadata.id)
    await driver.stop_sandbox(message.metadata.id)  # already suspended: no second patch
    await driver.start_sandbox(message.metadata.id)

    patches = [r.data for r in requests_of(emulator, "PATCH") if from_us(r)]
    assert patches == [
        {"spec": {"operatingMode": "Suspended"}, "metadata": {"resourceVersion": "7"}},
        {"spec": {"operatingMode": "Running"}, "metadata": {"resourceVersion": "7"}},
    ]
    ours = [r for r in requests_of(emulator, "PATCH") if from_us(r)]
    assert {r.headers.get("Content-Type") for r in ours} == {"application/merge-patch+json"}


async def test_a_start_goes_on_when_pods_may_not_be_read(
    driver: KubernetesDriver, emulator: KubernetesEmulator
) -> None:
    """The pod check is best effort: without permission to read pods (403) the start is sent."""
    message = sandbox_message("unchecked")
    await driver.create_sandbox(message)
    await driver.stop_sandbox(message.metadata.id)
    await emulator.post(  # a pod that the check would wait for, if it could read it
        f"/api/v1/namespaces/{NAMESPACE}/pods",
        json={"metadata": {"name": k8s_name("unchecked"), "namespace": NAMESPACE}},
    )
    emulator[kmock.resource("", "v1", "pods"), kmock.method.GET] << 403
    await driver.start_sandbox(message.metadata.id)
    pod_reads = [r for r in requests_of(emulator, "GET") if from_us(r) and "/pods/" in r.url.path]
    assert len(pod_reads) == 1
    assert stored(emulator, "unchecked")["spec"]["operatingMode"] == "Running"


async def test_a_start_waits_while_the_old_pod_exists(
    driver: KubernetesDriver, emulator: KubernetesEmulator
) -> None:
    message = sandbox_message("haunted")
    await driver.create_sandbox(message)
    await driver.stop_sandbox(message.metadata.id)
    await emulator.post(
        f"/api/v1/namespaces/{NAMESPACE}/pods",
        json={"metadata": {"name": k8s_name("haunted"), "namespace": NAMESPACE}},
    )
    await driver.start_sandbox(message.metadata.id)
    assert stored(emulator, "haunted")["spec"]["operatingMode"] == "Suspended"
    await emulator.delete(f"/api/v1/namespaces/{NAMESPACE}/pods/{k8s_name('haunted')}")
    await driver.start_sandbox(message.metadata.id)
    assert stored(emulator, "haunted")["spec"]["operatingMode"] == "Running"


async def test_a_conflicting_patch_is_read_and_sent_again(
    driver: KubernetesDriver, emulator: KubernetesEmulator
) -> None:
    message = sandbox_message("contended")
    await driver.create_sandbox(message)
    await emulator.patch(
        object_url(k8s_name("contended")), json={"metadata": {"resourceVersion": "3"}}
    )
    emulator[kmock.action.UPDATE, kmock.headers({"User-Agent": DRIVER_USER_AGENT})][:1] << 409
    await driver.stop_sandbox(message.metadata.id)
    gets = [
        r for r in requests_of(emulator, "GET") if from_us(r) and r.name == k8s_name("contended")
    ]
    assert len(gets) >= 2  # read, 409, read again
    assert stored(emulator, "contended")["spec"]["operatingMode"] == "Suspended"


async def test_delete_removes_the_object_with_a_uid_precondition(
    driver: KubernetesDriver, emulator: KubernetesEmulator
) -> None:
    message = sandbox_message("doomed")
    await driver.create_sandbox(message)
    await emulator.patch(object_url(k8s_name("doomed")), json={"metadata": {"uid": "uid-1"}})
    assert await driver.delete_sandbox(message.metadata.id) is True
    (delete,) = [r for r in requests_of(emulator, "DELETE") if from_us(r)]
    assert delete.data["preconditions"] == {"uid": "uid-1"}
    assert (resource_key(), NAMESPACE, "doomed") not in emulator.objects or (
        emulator.objects[resource_key(), NAMESPACE, k8s_name("doomed")].deleted
    )
    assert await driver.delete_sandbox(message.metadata.id) is False
    assert await driver.get_sandbox(message.metadata.id) is None


async def test_operations_find_objects_another_replica_created(
    driver: KubernetesDriver, emulator: KubernetesEmulator
) -> None:
    """An id the name index has never seen is found by its label."""
    url = str(emulator.url).rstrip("/")
    other = make_driver(url)
    await other.start()
    try:
        message = sandbox_message("elsewhere")
        await other.create_sandbox(message)
    finally:
        await other.close()
    fresh = make_driver(url)
    await fresh.start()
    try:
        snapshot = await fresh.get_sandbox(message.metadata.id)
        assert snapshot is not None and snapshot.sandbox_id == message.metadata.id
        await fresh.stop_sandbox(message.metadata.id)
        assert stored(emulator, "elsewhere")["spec"]["operatingMode"] == "Suspended"
        assert await fresh.get_sandbox("no-such-id") is None
        assert await fresh.get_sandbox("not a label value!") is None
    finally:
        await fresh.close()


# ---- the watch ----------------------------------------------------------------------------------


async def test_watch_events_become_snapshots_and_deletions(
    driver: KubernetesDriver, emulator: KubernetesEmulator
) -> None:
    message = sandbox_message("watched")
    sandbox_id = message.metadata.id
    async with collected(driver) as seen:
        await driver.create_sandbox(message)
        await emulator.patch(
            object_url(k8s_name("watched")), json=status_patch(running_status(), "42")
        )
        await until(lambda: any(_revision(e) == 42 for e in seen))
        await emulator.post(
            collection_url(),
            json={"metadata": {"name": "stranger", "labels": {"app": "x"}}, "spec": {}},
        )
        await driver.delete_sandbox(sandbox_id)
        await until(lambda: any(isinstance(e, DeletedEvent) for e in seen))
    snapshot = next(e.snapshot for e in seen if _revision(e) == 42)  # type: ignore[union-attr]
    assert snapshot.sandbox_id == sandbox_id
    assert [(c.type, c.status, c.reason) for c in snapshot.conditions] == [
        ("Ready", "True", "DependenciesReady"),
        ("Suspended", "False", "NotSuspended"),
        ("PodScheduled", "True", "Scheduled"),
    ]
    assert snapshot.conditions[0].last_transition_time_ms == 1777629600000
    assert snapshot.instance.pod_name == k8s_name("watched")
    assert snapshot.instance.pod_ips == ("10.0.0.7",)
    assert snapshot.instance.node_name == "node-a"
    ids = {e.snapshot.sandbox_id for e in seen if isinstance(e, SnapshotEvent)}
    assert ids == {sandbox_id}  # the unlabelled object is ignored
    assert [e for e in seen if isinstance(e, DeletedEvent)] == [DeletedEvent(sandbox_id)]


def _revision(event: DriverEvent) -> int | None:
    return event.snapshot.revision if isinstance(event, SnapshotEvent) else None


async def test_core_events_about_our_objects_become_platform_events_once(
    driver: KubernetesDriver, emulator: KubernetesEmulator
) -> None:
    message = sandbox_message("noisy")
    async with collected(driver) as seen:
        await driver.create_sandbox(message)
        await until(lambda: any(isinstance(e, SnapshotEvent) for e in seen))
        for name, kind, reason in (
            ("e1", "Pod", "Scheduled"),
            ("e2", "Sandbox", "SandboxReady"),
            ("e3", "Pod", "Unrelated"),
        ):
            await emulator.post(
                f"/api/v1/namespaces/{NAMESPACE}/events",
                json={
                    "metadata": {"name": name, "namespace": NAMESPACE, "uid": name},
                    "involvedObject": {
                        "kind": kind,
                        "name": k8s_name("noisy") if reason != "Unrelated" else "other-pod",
                        "apiVersion": "v1" if kind == "Pod" else "agents.x-k8s.io/v1beta1",
                    },
                    "type": "Normal",
                    "reason": reason,
                    "message": f"{reason} happened",
                    "count": 1,
                    "lastTimestamp": "2026-05-01T10:00:01Z",
                    "source": {"component": "default-scheduler"},
                },
            )
        await until(lambda: len([e for e in seen if isinstance(e, PlatformEvent)]) >= 2)
        # A relist replays stored Events; the driver publishes each delivery once.
        driver.handle_core_event(
            {
                "metadata": {"name": "e1", "namespace": NAMESPACE, "uid": "e1"},
                "involvedObject": {"kind": "Pod", "name": k8s_name("noisy"), "apiVersion": "v1"},
                "reason": "Scheduled",
                "count": 1,
                "lastTimestamp": "2026-05-01T10:00:01Z",
            }
        )
    platform = [e for e in seen if isinstance(e, PlatformEvent)]
    assert sorted(e.reason for e in platform) == ["SandboxReady", "Scheduled"]
    scheduled = next(e for e in platform if e.reason == "Scheduled")
    assert scheduled.sandbox_id == message.metadata.id
    assert scheduled.message == "Scheduled happened"
    assert scheduled.source == "default-scheduler"
    assert scheduled.timestamp_ms == 1777629601000


async def test_kopf_only_reads(driver: KubernetesDriver, emulator: KubernetesEmulator) -> None:
    """kopf writes no progress annotations, posts no events: replicas never fight."""
    message = sandbox_message("untouched")
    async with collected(driver) as seen:
        await driver.create_sandbox(message)
        await emulator.patch(
            object_url(k8s_name("untouched")), json=status_patch(running_status(), "5")
        )
        await until(lambda: any(_revision(e) == 5 for e in seen))
    by_kopf = [r for r in emulator if r.headers.get("User-Agent") == WATCH_USER_AGENT]
    assert by_kopf  # it did list and watch
    assert {str(r.method).rsplit(".")[-1].upper() for r in by_kopf} == {"GET"}
    assert "annotations" not in stored(emulator, "untouched")["metadata"]
    assert "finalizers" not in stored(emulator, "untouched")["metadata"]


async def test_watch_ready_follows_the_api_server(emulator: KubernetesEmulator) -> None:
    """Readiness drops when the API server is cut off and returns when kopf reconnects."""
    proxy = TcpProxy(emulator.url.host or "127.0.0.1", emulator.url.port or 80)
    await proxy.start()
    driver = make_driver(f"http://127.0.0.1:{proxy.port}")
    try:
        await driver.start()
        await until(lambda: driver.watch_ready)
        proxy.cut()
        await until(lambda: not driver.watch_ready)
        with pytest.raises(DriverError):
            await driver.get_sandbox("any")
        proxy.restore()
        await until(lambda: driver.watch_ready, timeout=15)
        message = sandbox_message("after-outage")
        await driver.create_sandbox(message)
        assert (await driver.get_sandbox(message.metadata.id)) is not None
    finally:
        await driver.close()
        await proxy.stop()


async def test_a_watch_failing_with_server_errors_keeps_retrying(
    emulator: KubernetesEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Persistent 5xx answers make the watch "not connected", never end kopf."""
    sandboxes = kmock.resource("agents.x-k8s.io", "v1beta1", "sandboxes")
    failures = len(FAST_BACKOFFS) + 2  # more attempts than one request used to be allowed
    emulator[kmock.action.WATCH, sandboxes][:failures] << 500
    driver = make_driver(str(emulator.url).rstrip("/"))
    try:
        await driver.start()
        await until(lambda: driver.watch_ready, timeout=15)
    finally:
        await driver.close()
    watches = [r for r in emulator if r.action == kmock.action.WATCH and r.resource == sandboxes]
    assert len(watches) > failures
    assert "kopf stopped unexpectedly" not in caplog.text


async def test_kopf_is_started_again_if_it_ends(
    monkeypatch: pytest.MonkeyPatch, emulator: KubernetesEmulator
) -> None:
    monkeypatch.setattr(kopf_watch, "RESTART_DELAYS", (0.01,))
    watch = kopf_watch.KopfWatch(
        login=fixed_login(configuration_for(str(emulator.url))),
        namespace=NAMESPACE,
        version="v1beta1",
        on_sandbox=lambda _type, _body: None,
        on_core_event=lambda _body: None,
    )
    spawned: list[int] = []
    real_operate = watch._operate

    async def operate(stop: asyncio.Event, ready: asyncio.Event) -> None:
        spawned.append(len(spawned))
        if len(spawned) == 1:  # the first run ends at once, as if kopf had crashed
            return
        await real_operate(stop, ready)

    monkeypatch.setattr(watch, "_operate", operate)
    try:
        await watch.start()
        await until(lambda: watch.ready, timeout=15)
    finally:
        await watch.close()
    assert spawned == [0, 1]


async def test_revision_is_none_without_a_numeric_resource_version(
    driver: KubernetesDriver, emulator: KubernetesEmulator
) -> None:
    message = sandbox_message("unversioned")
    await driver.create_sandbox(message)
    snapshot = await driver.get_sandbox(message.metadata.id)
    assert snapshot is not None
    assert snapshot.revision is None
    assert snapshot.has_status is False
    await emulator.patch(
        object_url(k8s_name("unversioned")), json={"metadata": {"resourceVersion": "abc"}}
    )
    snapshot = await driver.get_sandbox(message.metadata.id)
    assert snapshot is not None and snapshot.revision is None
    revisions = Revisions(9)
    await emulator.patch(
        object_url(k8s_name("unversioned")),
        json={"metadata": {"resourceVersion": revisions.next()}},
    )
    snapshot = await driver.get_sandbox(message.metadata.id)
    assert snapshot is not None and snapshot.revision == 9
