"""What callers may ask of a sandbox pod: reserved prefixes and the operator's allowlists."""

from __future__ import annotations

import pytest

from shellgate.api import openshell_pb2
from shellgate.reconcilers.pod_policy import PodPolicy, is_reserved_key, validate_pod_request

DEFAULTS = ("openshell.ai/", "agents.x-k8s.io/", "kubernetes.io/", "k8s.io/", "sidecar.istio.io/")


@pytest.mark.parametrize(
    ("key", "reserved"),
    [
        ("openshell.ai/sandbox-id", True),
        ("agents.x-k8s.io/pod-name", True),
        ("kubernetes.io/hostname", True),
        ("node.kubernetes.io/instance-type", True),  # a subdomain of a reserved domain
        ("K8S.IO/thing", True),
        ("sidecar.istio.io/inject", True),
        ("team", False),
        ("example.com/team", False),
        ("notkubernetes.io/x", False),  # not a subdomain, just a longer name
        ("kubernetes.io.example.com/x", False),
    ],
)
def test_reserved_keys(key: str, reserved: bool) -> None:
    assert is_reserved_key(key, DEFAULTS) is reserved


def spec(**template: object) -> openshell_pb2.SandboxSpec:
    built = openshell_pb2.SandboxSpec()
    for name, value in template.items():
        if isinstance(value, dict):
            getattr(built.template, name).update(value)
        else:
            setattr(built.template, name, value)
    return built


def fields(found: list[object]) -> list[str]:
    return [v.field for v in found]  # type: ignore[attr-defined]


def test_reserved_labels_and_annotations_are_refused() -> None:
    found = validate_pod_request(
        spec(labels={"team": "a", "agents.x-k8s.io/adoptable": "x"},
             annotations={"sidecar.istio.io/inject": "true"}),
        PodPolicy(),
    )  # fmt: skip
    assert fields(found) == ["spec.template.labels", "spec.template.annotations"]
    assert "agents.x-k8s.io/adoptable" in found[0].description


def test_the_operator_can_reserve_more_prefixes() -> None:
    request = spec(labels={"mesh.example.com/route": "x"})
    assert validate_pod_request(request, PodPolicy()) == []
    policy = PodPolicy(extra_reserved_prefixes=("mesh.example.com/",))
    assert fields(validate_pod_request(request, policy)) == ["spec.template.labels"]


def test_runtime_classes_only_from_the_allowlist() -> None:
    request = spec(runtime_class_name="gvisor")
    refused = validate_pod_request(request, PodPolicy())
    assert fields(refused) == ["spec.template.runtime_class_name"]
    assert "allowed: none" in refused[0].description
    assert validate_pod_request(request, PodPolicy(runtime_classes=frozenset({"gvisor"}))) == []
    kata = validate_pod_request(
        spec(runtime_class_name="kata"), PodPolicy(runtime_classes=frozenset({"gvisor"}))
    )
    assert "allowed: gvisor" in kata[0].description


@pytest.mark.parametrize(("user_namespaces", "host_users"), [(True, False), (False, True)])
def test_host_users_only_from_the_allowlist(user_namespaces: bool, host_users: bool) -> None:
    request = spec(user_namespaces=user_namespaces)
    assert fields(validate_pod_request(request, PodPolicy())) == ["spec.template.user_namespaces"]
    allowed = PodPolicy(host_users=frozenset({host_users}))
    assert validate_pod_request(request, allowed) == []
    other = PodPolicy(host_users=frozenset({not host_users}))
    assert fields(validate_pod_request(request, other)) == ["spec.template.user_namespaces"]


def test_a_request_without_pod_choices_passes() -> None:
    assert validate_pod_request(spec(labels={"team": "a"}), PodPolicy()) == []
