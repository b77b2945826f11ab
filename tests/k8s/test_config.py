"""Production wiring of the Kubernetes driver: namespace and image from ``ServeOptions``."""

from __future__ import annotations

from pathlib import Path

import pytest

from shellgate.controller.app.cli import build_parser
from shellgate.controller.app.options import ServeOptions, options_from_args
from shellgate.controller.app.serve import build_driver
from shellgate.controller.drivers.kubernetes import KubernetesDriver, client
from shellgate.reconcilers.pod_policy import PodPolicy, PodSettings
from shellgate.store import ConfigurationError


def test_the_namespace_defaults_to_the_pods_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace_file = tmp_path / "namespace"
    monkeypatch.setattr(client, "SERVICE_ACCOUNT_NAMESPACE", namespace_file)
    assert client.default_namespace() == "default"  # not in a pod
    namespace_file.write_text("sandboxes-prod\n")
    driver = build_driver(ServeOptions(driver="kubernetes", sandbox_image="img:1"))
    assert isinstance(driver, KubernetesDriver)
    assert (driver.namespace, driver.sandbox_image) == ("sandboxes-prod", "img:1")
    assert driver.name == "kubernetes" and driver.routes_by_owner is False
    assert driver.owns("anything") and not driver.watch_ready


def test_an_explicit_namespace_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client, "SERVICE_ACCOUNT_NAMESPACE", tmp_path / "absent")
    driver = build_driver(ServeOptions(driver="kubernetes", namespace="team-a"))
    assert isinstance(driver, KubernetesDriver)
    assert driver.namespace == "team-a"


def serve_options(*flags: str) -> ServeOptions:
    return options_from_args(build_parser().parse_args(["serve", *flags]))


def test_operator_pod_settings_from_flags() -> None:
    defaults = serve_options()
    assert defaults.pod_settings == PodSettings()
    assert defaults.provisioning_deadline == 600.0
    options = serve_options(
        "--driver", "kubernetes",
        "--gateway-id", "blue",
        "--sandbox-pod-security-context", '{"runAsUser": 1000, "runAsNonRoot": true}',
        "--sandbox-container-security-context", "{}",
        "--sandbox-runtime-classes", "gvisor, kata",
        "--sandbox-host-users", "false",
        "--reserved-label-prefixes", "mesh.example.com/",
        "--provisioning-deadline-seconds", "90",
    )  # fmt: skip
    settings = options.pod_settings
    assert settings.gateway_id == "blue"
    assert settings.pod_security_context == {"runAsUser": 1000, "runAsNonRoot": True}
    assert settings.container_security_context == {}
    assert settings.policy == PodPolicy(
        extra_reserved_prefixes=("mesh.example.com/",),
        runtime_classes=frozenset({"gvisor", "kata"}),
        host_users=frozenset({False}),
    )
    assert options.provisioning_deadline == 90.0
    driver = build_driver(options)
    assert isinstance(driver, KubernetesDriver)
    assert driver.pod_settings == settings and driver.gateway_id == "blue"


def test_operator_pod_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELLGATE_GATEWAY_ID", "green")
    monkeypatch.setenv("SHELLGATE_PROVISIONING_DEADLINE_SECONDS", "0")
    options = serve_options()
    assert options.pod_settings.gateway_id == "green"
    assert options.provisioning_deadline == 0.0


@pytest.mark.parametrize(
    ("flag", "value", "named"),
    [
        ("--gateway-id", "not a label!", "--gateway-id"),
        ("--sandbox-pod-security-context", "[1]", "--sandbox-pod-security-context"),
        ("--sandbox-container-security-context", "{", "--sandbox-container-security-context"),
        ("--sandbox-host-users", "maybe", "--sandbox-host-users"),
        ("--reserved-label-prefixes", "no-slash", "--reserved-label-prefixes"),
        ("--provisioning-deadline-seconds", "-1", "--provisioning-deadline-seconds"),
        ("--provisioning-deadline-seconds", "nan", "--provisioning-deadline-seconds"),
    ],
)
def test_bad_operator_settings_name_their_flag(flag: str, value: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        serve_options(flag, value)
