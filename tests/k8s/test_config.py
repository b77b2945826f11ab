"""Production wiring of the Kubernetes driver: namespace and image from ``ServeOptions``."""

from __future__ import annotations

from pathlib import Path

import pytest

from shellgate.controller.app.options import ServeOptions
from shellgate.controller.app.serve import build_driver
from shellgate.controller.drivers.kubernetes import KubernetesDriver, client


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
