"""Paths, constants and the parsed-render helper shared by the chart tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "shellgate"
DEPLOY_DIR = REPO / "deploy"
HA_VALUES_FILE = DEPLOY_DIR / "examples" / "values-ha.yaml"
RULES_FILE = DEPLOY_DIR / "prometheus" / "shellgate-rules.yaml"
CHART_RULES_FILE = CHART_DIR / "files" / "shellgate-rules.yaml"
DASHBOARD_FILE = DEPLOY_DIR / "examples" / "grafana-dashboard.json"
DOCS_FILE = REPO / "docs" / "install-kubernetes.md"

RELEASE = "shellgate"
NAMESPACE = "shellgate"

# Every metric shellgate exposes on /metrics, with its type. Dashboards and alerts may use
# nothing else (histograms also through their _bucket, _sum and _count series).
METRICS: dict[str, str] = {
    "shellgate_store_cas_attempts_total": "counter",
    "shellgate_store_cas_attempts_per_call": "histogram",
    "shellgate_store_cas_exhausted_total": "counter",
    "shellgate_store_operation_duration_seconds": "histogram",
    "shellgate_driver_events_total": "counter",
    "shellgate_reconcile_total": "counter",
    "shellgate_reconcile_duration_seconds": "histogram",
    "shellgate_grpc_requests_total": "counter",
    "shellgate_grpc_request_duration_seconds": "histogram",
    "shellgate_sandboxes": "gauge",
    "shellgate_watch_streams": "gauge",
    "shellgate_change_feed_lag_seconds": "gauge",
    "shellgate_build_info": "gauge",
    "shellgate_store_up": "gauge",
    "shellgate_driver_watch_up": "gauge",
}

# Values that switch on every optional object, for validation and structural tests.
EVERYTHING_ON: dict[str, Any] = {
    "replicaCount": 2,
    "database": {"url": "postgresql://shellgate:secret@db.example:5432/shellgate"},
    "encryption": {"existingSecret": "shellgate-keys"},
    "sandboxNamespace": "sandboxes",
    "sandboxImage": "ghcr.io/example/sandbox:1",
    "extraEnv": [{"name": "EXTRA", "value": "1"}],
    "service": {"headless": True},
    "networkPolicy": {
        "enabled": True,
        "grpcFrom": [{"namespaceSelector": {"matchLabels": {"team": "agents"}}}],
    },
    "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True}},
}


class Manifests:
    """The objects of one render, with lookups by kind."""

    def __init__(self, objects: list[dict[str, Any]], notes: str) -> None:
        self.objects = objects
        self.notes = notes

    @property
    def kinds(self) -> set[str]:
        return {obj["kind"] for obj in self.objects}

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, got {len(found)}"
        return found[0]

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.one("Deployment")["spec"]["template"]["spec"]
        return spec

    @property
    def container(self) -> dict[str, Any]:
        containers = self.pod_spec["containers"]
        assert [c["name"] for c in containers] == ["shellgate"]
        container: dict[str, Any] = containers[0]
        return container


Render = Callable[..., Manifests]
