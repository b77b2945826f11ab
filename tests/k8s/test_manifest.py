"""The pure mapping between sandboxes and agent-sandbox objects, table by table."""

from __future__ import annotations

from typing import Any

import pytest

from shellgate.api import openshell_pb2 as P
from shellgate.controller.drivers.kubernetes.manifest import (
    ManifestError,
    belongs_to,
    choose_version,
    event_identity,
    instance_of,
    involved_object,
    lifecycle_patch,
    object_name,
    object_path,
    platform_event_of,
    quantity,
    revision_of,
    sandbox_object,
    snapshot_of,
    start_patch,
    time_ms,
)
from shellgate.reconcilers.phase import derive_backend_phase
from shellgate.reconcilers.pod_policy import PodSettings
from shellgate.reconcilers.snapshot import InstanceFacts
from shellgate.reconcilers.validation import is_dns1123_subdomain
from tests.support.objects import sandbox as sandbox_message

OURS = {"openshell.ai/sandbox-id": "id-1", "openshell.ai/managed-by": "shellgate"}


def body(
    *,
    labels: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
    **metadata: Any,
) -> dict[str, Any]:
    meta = {"name": "sb", "namespace": "ns", "labels": OURS if labels is None else labels}
    meta.update(metadata)
    built: dict[str, Any] = {"apiVersion": "agents.x-k8s.io/v1beta1", "metadata": meta}
    if status is not None:
        built["status"] = status
    return built


@pytest.mark.parametrize(
    ("served", "chosen"),
    [
        (["v1alpha1", "v1beta1"], "v1beta1"),
        (["v1beta1"], "v1beta1"),
        (["v1alpha1"], "v1alpha1"),
        (["v1"], None),
        ([], None),
    ],
)
def test_choose_version(served: list[str], chosen: str | None) -> None:
    assert choose_version(served) == chosen


@pytest.mark.parametrize(
    ("raw", "revision"),
    [("17", 17), (17, 17), ("", None), ("abc", None), ("-3", None), (None, None), (True, None)],
)
def test_revision_is_the_resource_version_as_an_integer(raw: object, revision: int | None) -> None:
    assert revision_of(body(resourceVersion=raw)) == revision


@pytest.mark.parametrize(
    "labels",
    [
        {},
        {"openshell.ai/sandbox-id": "id-1"},
        {"openshell.ai/managed-by": "shellgate"},
        {"openshell.ai/sandbox-id": "id-1", "openshell.ai/managed-by": "openshell"},
    ],
)
def test_objects_we_do_not_manage_give_no_snapshot(labels: dict[str, str]) -> None:
    assert snapshot_of(body(labels=labels)) is None


@pytest.mark.parametrize(
    ("status", "deletion", "phase_name"),
    [
        (None, None, "UNKNOWN"),
        ({"conditions": [{"type": "Ready", "status": "True"}]}, None, "READY"),
        (
            {
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "DependenciesNotReady"}
                ]
            },
            None,
            "PROVISIONING",
        ),
        (
            {"conditions": [{"type": "Ready", "status": "False", "reason": "PodFailed"}]},
            None,
            "ERROR",
        ),
        ({"conditions": [{"type": "Suspended", "status": "True"}]}, None, "STOPPED"),
        ({"conditions": []}, "2026-05-01T10:00:00Z", "DELETING"),
    ],
)
def test_snapshots_derive_the_reference_phase(
    status: dict[str, Any] | None, deletion: str | None, phase_name: str
) -> None:
    extra = {"deletionTimestamp": deletion} if deletion else {}
    built = body(status=status, **extra)
    if phase_name == "STOPPED":  # Suspended counts only on an object asked to be suspended
        built["spec"] = {"operatingMode": "Suspended"}
    snapshot = snapshot_of(built)
    assert snapshot is not None
    assert derive_backend_phase(snapshot) == getattr(P, f"SANDBOX_PHASE_{phase_name}")


def test_only_the_four_agent_sandbox_conditions_are_reported() -> None:
    conditions = [
        {"type": t, "status": "True", "reason": f"R{t}", "message": f"m{t}"}
        for t in ("Ready", "Custom", "Suspended", "PodScheduled", "Finished")
    ]
    snapshot = snapshot_of(body(status={"conditions": [*conditions, "junk"]}))
    assert snapshot is not None
    assert [(c.type, c.reason, c.message) for c in snapshot.conditions] == [
        ("Ready", "RReady", "mReady"),
        ("Suspended", "RSuspended", "mSuspended"),
        ("PodScheduled", "RPodScheduled", "mPodScheduled"),
        ("Finished", "RFinished", "mFinished"),
    ]


@pytest.mark.parametrize(
    ("status", "annotations", "facts"),
    [
        ({}, {}, InstanceFacts()),
        ({"podIPs": None, "nodeName": None}, {}, InstanceFacts()),
        (
            {"podIPs": ["10.0.0.1", {"ip": "fd00::1"}], "nodeName": "n1"},
            {},
            InstanceFacts("sb", ("10.0.0.1", "fd00::1"), "n1"),
        ),
        (
            {"conditions": [{"type": "PodScheduled", "status": "False"}]},
            {"agents.x-k8s.io/pod-name": "warm-pod-7"},
            InstanceFacts("warm-pod-7"),
        ),
    ],
)
def test_instance_facts(
    status: dict[str, Any], annotations: dict[str, str], facts: InstanceFacts
) -> None:
    assert instance_of(body(status=status, annotations=annotations)) == facts


@pytest.mark.parametrize(
    ("version", "spec", "running", "patch"),
    [
        ("v1beta1", {"operatingMode": "Running"}, False, {"operatingMode": "Suspended"}),
        ("v1beta1", {}, False, {"operatingMode": "Suspended"}),
        ("v1beta1", {"operatingMode": "Suspended"}, True, {"operatingMode": "Running"}),
        ("v1beta1", {"operatingMode": "Suspended"}, False, None),
        ("v1beta1", {}, True, None),
        ("v1alpha1", {"replicas": 1}, False, {"replicas": 0}),
        ("v1alpha1", {"replicas": 0}, True, {"replicas": 1}),
        ("v1alpha1", {"replicas": 0}, False, None),
    ],
)
def test_lifecycle_patch_follows_the_objects_own_version(
    version: str, spec: dict[str, Any], running: bool, patch: dict[str, Any] | None
) -> None:
    obj = {"apiVersion": f"agents.x-k8s.io/{version}", "metadata": {"name": "x"}, "spec": spec}
    assert lifecycle_patch(obj, running=running) == (None if patch is None else {"spec": patch})
    obj["metadata"]["resourceVersion"] = "41"
    expected = None if patch is None else {"spec": patch, "metadata": {"resourceVersion": "41"}}
    assert lifecycle_patch(obj, running=running) == expected


def test_object_path_uses_the_objects_version() -> None:
    obj = {"apiVersion": "agents.x-k8s.io/v1alpha1", "metadata": {"name": "a", "namespace": "n"}}
    assert object_path(obj) == "/apis/agents.x-k8s.io/v1alpha1/namespaces/n/sandboxes/a"


def test_sandbox_object_needs_an_image() -> None:
    with pytest.raises(ManifestError):
        sandbox_object(sandbox_message("x"), version="v1beta1", namespace="n", default_image="")


def test_user_namespaces_and_tty() -> None:
    message = sandbox_message("x")
    message.spec.template.user_namespaces = True
    message.spec.tty = True
    built = sandbox_object(message, version="v1beta1", namespace="n", default_image="img")
    pod = built["spec"]["podTemplate"]["spec"]
    assert pod["hostUsers"] is False
    assert pod["containers"][0]["tty"] is True and pod["containers"][0]["stdin"] is True


@pytest.mark.parametrize(
    ("raw", "ms"),
    [
        ("2026-05-01T10:00:00Z", 1777629600000),
        ("2026-05-01T10:00:00.250000Z", 1777629600250),
        ("2026-05-01T12:00:00+02:00", 1777629600000),
        ("yesterday", 0),
        (None, 0),
    ],
)
def test_time_ms(raw: object, ms: int) -> None:
    assert time_ms(raw) == ms


@pytest.mark.parametrize(
    ("involved", "expected"),
    [
        ({"kind": "Pod", "name": "p", "apiVersion": "v1"}, ("Pod", "p")),
        (
            {"kind": "Sandbox", "name": "s", "apiVersion": "agents.x-k8s.io/v1beta1"},
            ("Sandbox", "s"),
        ),
        ({"kind": "Sandbox", "name": "s", "apiVersion": "other.io/v1"}, None),
        ({"kind": "Pod", "name": "p", "apiVersion": "metrics.k8s.io/v1beta1"}, None),
        ({"kind": "Deployment", "name": "d", "apiVersion": "apps/v1"}, None),
        ({"kind": "Pod"}, None),
    ],
)
def test_involved_object(involved: dict[str, str], expected: tuple[str, str] | None) -> None:
    assert involved_object({"involvedObject": involved}) == expected


def test_platform_event_prefers_the_last_timestamp_and_names_its_source() -> None:
    event = {
        "metadata": {"name": "e", "uid": "u", "resourceVersion": "9"},
        "type": "Warning",
        "reason": "Failed",
        "message": "pull failed",
        "count": 4,
        "firstTimestamp": "2026-05-01T09:00:00Z",
        "lastTimestamp": "2026-05-01T10:00:00Z",
        "source": {"component": "kubelet"},
    }
    platform = platform_event_of(event, "id-1")
    assert (platform.type, platform.reason, platform.count) == ("Warning", "Failed", 4)
    assert (platform.timestamp_ms, platform.source) == (1777629600000, "kubelet")
    repeated = {**event, "count": 5, "lastTimestamp": "2026-05-01T10:05:00Z"}
    assert event_identity(repeated) != event_identity(event)
    assert event_identity(dict(event)) == event_identity(event)


# ---- names, quantities, the pod template, installations, starts -----------------------------


def test_object_names_join_workspace_and_name() -> None:
    assert object_name("team-a", "box") == "team-a--box"
    assert object_name("", "box") == "default--box"
    assert object_name("team-a", "box") != object_name("team-b", "box")
    assert object_name("a", "b--c") == "a--b--c"
    split_differently = object_name("a--b", "c")
    assert split_differently != "a--b--c" and split_differently.startswith("a--b--c-")


def test_long_names_are_cut_and_hashed_into_a_dns_label() -> None:
    long_name = "a" * 60
    first = object_name("team-a", long_name)
    second = object_name("team-a", long_name[:-1] + "b")
    for name in (first, second):
        assert len(name) <= 63
        assert is_dns1123_subdomain(name) and name[-1].isalnum()
        assert name.startswith("team-a--aaaa")
    assert first != second
    dotted = object_name("ws", "x." * 40 + "y")
    assert len(dotted) <= 63 and is_dns1123_subdomain(dotted)


@pytest.mark.parametrize(
    ("raw", "sent"),
    [(0.5, "0.5"), (2.0, "2"), (2, "2"), (1e-3, "0.001"), (1e9, "1000000000"), ("1Gi", "1Gi")],
)
def test_quantities_are_strings(raw: object, sent: object) -> None:
    assert quantity(raw) == sent


@pytest.mark.parametrize(
    ("policy", "sent"),
    [
        (P.SANDBOX_RESTART_POLICY_UNSPECIFIED, "Never"),
        (P.SANDBOX_RESTART_POLICY_NEVER, "Never"),
        (P.SANDBOX_RESTART_POLICY_ON_FAILURE, "OnFailure"),
        (P.SANDBOX_RESTART_POLICY_ALWAYS, "Always"),
    ],
)
def test_restart_policy_comes_from_the_spec(policy: int, sent: str) -> None:
    message = sandbox_message("rp")
    message.spec.restart_policy = policy  # type: ignore[assignment]
    body = sandbox_object(message, version="v1beta1", namespace="ns", default_image="i")
    assert body["spec"]["podTemplate"]["spec"]["restartPolicy"] == sent


def test_security_contexts_are_the_operators() -> None:
    settings = PodSettings(
        gateway_id="blue",
        pod_security_context={"runAsUser": 1000},
        container_security_context={},
    )
    body = sandbox_object(
        sandbox_message("sc"), version="v1beta1", namespace="ns", default_image="i",
        settings=settings,
    )  # fmt: skip
    pod = body["spec"]["podTemplate"]["spec"]
    assert pod["securityContext"] == {"runAsUser": 1000}
    assert "securityContext" not in pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False
    assert body["metadata"]["labels"]["openshell.ai/gateway-id"] == "blue"
    assert body["spec"]["podTemplate"]["metadata"]["labels"]["openshell.ai/gateway-id"] == "blue"


@pytest.mark.parametrize(
    ("labels", "blue", "green"),
    [
        ({**OURS, "openshell.ai/gateway-id": "blue"}, True, False),
        ({**OURS, "openshell.ai/gateway-id": "green"}, False, True),
        (OURS, True, True),  # written before gateway ids: whoever uses the namespace
    ],
)
def test_objects_belong_to_one_installation(
    labels: dict[str, str], blue: bool, green: bool
) -> None:
    assert belongs_to(body(labels=labels), "blue") is blue
    assert belongs_to(body(labels=labels), "green") is green


def _object(spec: dict[str, Any], conditions: list[dict[str, Any]]) -> dict[str, Any]:
    built = body(status={"conditions": conditions}, resourceVersion="5")
    built["spec"] = spec
    return built


def test_start_runs_a_stopped_object_and_stops_an_ended_one_first() -> None:
    suspended = _object({"operatingMode": "Suspended"}, [{"type": "Suspended", "status": "True"}])
    assert start_patch(suspended) == {
        "spec": {"operatingMode": "Running"},
        "metadata": {"resourceVersion": "5"},
    }
    failed = _object({"operatingMode": "Running"}, [
        {"type": "Finished", "status": "True", "reason": "PodFailed"}])  # fmt: skip
    assert start_patch(failed) == {
        "spec": {"operatingMode": "Suspended"},
        "metadata": {"resourceVersion": "5"},
    }
    pending = _object({"operatingMode": "Running"}, [
        {"type": "Ready", "status": "False", "reason": "DependenciesNotReady"}])  # fmt: skip
    assert start_patch(pending) is None
    terminating = _object({"operatingMode": "Suspended"}, [
        {"type": "Suspended", "status": "False", "reason": "PodTerminating"}])  # fmt: skip
    assert start_patch(terminating) is None  # the old pod first has to go
