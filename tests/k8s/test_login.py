"""Production login: kubeconfig outside a cluster, the same credentials for kopf."""

from __future__ import annotations

from pathlib import Path

import kopf
import pytest

from shellgate.controller.drivers.kubernetes.client import (
    connection_info,
    login_in_cluster_or_kubeconfig,
)
from tests.support.kmock_server import write_kubeconfig


async def test_outside_a_cluster_the_kubeconfig_named_by_KUBECONFIG_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, "http://127.0.0.1:6443")  # token: kmock
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))

    configuration = await login_in_cluster_or_kubeconfig()
    info = await connection_info(configuration)

    assert configuration.host == "http://127.0.0.1:6443"
    assert (info.server, info.scheme, info.token) == ("http://127.0.0.1:6443", "Bearer", "kmock")
    assert info.as_http_headers()["Authorization"] == "Bearer kmock"


async def test_without_a_cluster_or_a_kubeconfig_login_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    with pytest.raises(kopf.LoginError, match="kubeconfig"):
        await login_in_cluster_or_kubeconfig()
