"""Every object and patch the driver sends, checked against the real agent-sandbox CRDs.

The schemas are the vendored CRDs of v0.5.6 (v1beta1 and v1alpha1) and v0.4.6 (v1alpha1).
A field the schema does not declare would be pruned by the API server without a word, so it
is a failure here, as is a wrong type (``cpu: 0.5`` as a float fails the int-or-string check).
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
from kmock import KubernetesEmulator

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.kubernetes import KubernetesDriver
from shellgate.controller.drivers.kubernetes.manifest import (
    lifecycle_patch,
    sandbox_object,
    start_patch,
)
from shellgate.reconcilers.pod_policy import PodPolicy, PodSettings
from tests.k8s.conftest import make_driver, until
from tests.support.crd_schema import load_schema, merged, problems
from tests.support.k8s_emulator import k8s_name, object_url, status_patch
from tests.support.objects import sandbox as sandbox_message

pytestmark = pytest.mark.timeout(60)

READY = {"type": "Ready", "status": "True", "reason": "DependenciesReady"}
SUSPENDED = {"type": "Suspended", "status": "True", "reason": "PodTerminated"}
SCHEMAS = [("v0.5.6", "v1beta1"), ("v0.5.6", "v1alpha1"), ("v0.4.6", "v1alpha1")]
PERMISSIVE = PodSettings(
    policy=PodPolicy(runtime_classes=frozenset({"gvisor"}), host_users=frozenset({True, False}))
)


@functools.cache
def schema(release: str, version: str) -> dict[str, Any]:
    return load_schema(release, version)


def everything(name: str = "everything") -> openshell_pb2.Sandbox:
    """A sandbox that uses every field the driver maps."""
    message = sandbox_message(name, workspace="team-a")
    spec = message.spec
    spec.template.image = "ghcr.io/example/agent:2"
    spec.template.environment["A"] = "1"
    spec.template.labels["team"] = "infra"
    spec.template.annotations["note"] = "hello"
    spec.template.runtime_class_name = "gvisor"
    spec.template.user_namespaces = True
    spec.template.resources.update(
        {"limits": {"cpu": 0.5, "memory": "1Gi"}, "requests": {"cpu": 2, "memory": 1e9}}
    )
    spec.environment["B"] = "2"
    spec.command.extend(["sleep", "infinity"])
    spec.resource_requirements.gpu.count = 1
    spec.tty = True
    spec.restart_policy = openshell_pb2.SANDBOX_RESTART_POLICY_ON_FAILURE
    return message


# ---- the validator itself ------------------------------------------------------------------


def test_the_validator_finds_pruned_fields_wrong_types_and_bad_enums() -> None:
    body = sandbox_object(
        everything(), version="v1beta1", namespace="ns", default_image="", settings=PERMISSIVE
    )
    assert problems(body, schema("v0.5.6", "v1beta1")) == []
    broken = merged(
        body,
        {
            "spec": {
                "operatingMode": "Paused",
                "unknownKnob": True,
                "podTemplate": {"spec": {"containers": [{"name": "x", "resources": {
                    "limits": {"cpu": 0.5}}, "madeUp": 1}]}},
            }
        },
    )  # fmt: skip
    found = problems(broken, schema("v0.5.6", "v1beta1"))
    assert any("operatingMode" in p and "Paused" in p for p in found)
    assert any(p.startswith(".spec.unknownKnob: unknown field") for p in found)
    assert any("containers[0].madeUp: unknown field" in p for p in found)
    assert any("limits.cpu: must be an integer or a string" in p for p in found)
    v1alpha1_only = {"spec": {"replicas": 1}}
    assert problems(v1alpha1_only, schema("v0.5.6", "v1beta1"), patch=True) == [
        ".spec.replicas: unknown field (the API server would prune it)"
    ]


# ---- what the manifest builds ----------------------------------------------------------------


@pytest.mark.parametrize(("release", "version"), SCHEMAS)
def test_created_objects_match_the_schema(release: str, version: str) -> None:
    for message in (everything(), sandbox_message("plain")):
        body = sandbox_object(
            message, version=version, namespace="ns", default_image="img:1", settings=PERMISSIVE
        )
        assert problems(body, schema(release, version)) == []


@pytest.mark.parametrize(("release", "version"), SCHEMAS)
def test_lifecycle_patches_match_the_schema(release: str, version: str) -> None:
    body = sandbox_object(everything(), version=version, namespace="ns", default_image="")
    body["metadata"]["resourceVersion"] = "7"
    stop = lifecycle_patch(body, running=False)
    assert stop is not None
    assert problems(stop, schema(release, version), patch=True) == []
    stopped = merged(body, stop)
    assert problems(stopped, schema(release, version)) == []
    start = start_patch(stopped)
    assert start is not None
    assert problems(start, schema(release, version), patch=True) == []
    assert problems(merged(stopped, start), schema(release, version)) == []


def test_quantities_would_fail_the_schema_as_numbers() -> None:
    """What the driver used to send: a Struct number is a float, refused as int-or-string."""
    body = sandbox_object(everything(), version="v1beta1", namespace="ns", default_image="")
    resources = body["spec"]["podTemplate"]["spec"]["containers"][0]["resources"]
    assert resources == {
        "limits": {"cpu": "0.5", "memory": "1Gi", "nvidia.com/gpu": "1"},
        "requests": {"cpu": "2", "memory": "1000000000"},
    }
    resources["limits"]["cpu"] = 0.5
    assert problems(body, schema("v0.5.6", "v1beta1"))


# ---- what the driver sends, through kmock -----------------------------------------------------


@pytest.mark.parametrize(
    ("emulator_versions", "release", "version"),
    [(("v1beta1", "v1alpha1"), "v0.5.6", "v1beta1"), (("v1alpha1",), "v0.4.6", "v1alpha1")],
    indirect=["emulator_versions"],
)
async def test_every_request_body_the_driver_sends_matches_the_schema(
    emulator: KubernetesEmulator, release: str, version: str
) -> None:
    driver: KubernetesDriver = make_driver(
        str(emulator.url).rstrip("/"), image="img:1", pod_settings=PERMISSIVE
    )
    await driver.start()
    try:
        await until(lambda: driver.watch_ready)
        message = everything("checked")
        await driver.create_sandbox(message)
        name = k8s_name("checked", "team-a")
        await emulator.patch(
            object_url(name, version=version),
            json=status_patch({"conditions": [READY]}, "9"),
        )
        await driver.stop_sandbox(message.metadata.id)
        stopped = [SUSPENDED] if version == "v1beta1" else [READY]  # v1alpha1: replicas 0
        await emulator.patch(
            object_url(name, version=version),
            json=status_patch({"conditions": stopped, "replicas": None}, "10"),
        )
        await driver.start_sandbox(message.metadata.id)
        await driver.delete_sandbox(message.metadata.id)
    finally:
        await driver.close()
    sent = [
        (str(r.method).upper(), r.data)
        for r in emulator
        if r.headers.get("User-Agent") == "shellgate/driver"
        and str(r.method).upper().rpartition(".")[2] in ("POST", "PATCH")
    ]
    methods = [m.rpartition(".")[2] for m, _ in sent]
    assert methods == ["POST", "PATCH", "PATCH"]
    for method, data in sent:
        is_patch = method.endswith("PATCH")
        assert problems(data, schema(release, version), patch=is_patch) == [], method
