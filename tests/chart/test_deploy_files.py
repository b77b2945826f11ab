"""deploy/: plain RBAC manifests, the example Sandbox, the Dockerfile, the HA values and the
Grafana dashboard."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import yaml

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.kubernetes.manifest import sandbox_object
from tests.support.crd_schema import load_schema, problems

from . import promqlish
from .support import DASHBOARD_FILE, DEPLOY_DIR, METRICS, Render

RBAC_DIR = DEPLOY_DIR / "rbac"
SANDBOX_EXAMPLE = DEPLOY_DIR / "examples" / "sandbox.yaml"
DOCKERFILE = DEPLOY_DIR / "Dockerfile"


def _load_all(path: Any) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


# --- deploy/rbac -----------------------------------------------------------------------------


def test_plain_rbac_manifests_validate(
    validate_object: Callable[[dict[str, Any], str], None],
) -> None:
    objects = [obj for path in sorted(RBAC_DIR.glob("*.yaml")) for obj in _load_all(path)]
    assert sorted(obj["kind"] for obj in objects) == ["Role", "RoleBinding", "ServiceAccount"]
    for obj in objects:
        validate_object(obj, "1.37.0")


def test_plain_rbac_matches_the_chart(render: Render) -> None:
    """`helm install shellgate` in namespace shellgate gives the same objects as deploy/rbac/."""
    m = render()
    plain = {obj["kind"]: obj for path in RBAC_DIR.glob("*.yaml") for obj in _load_all(path)}
    assert plain["Role"]["rules"] == m.one("Role")["rules"]
    assert plain["RoleBinding"]["roleRef"] == m.one("RoleBinding")["roleRef"]
    assert plain["RoleBinding"]["subjects"] == m.one("RoleBinding")["subjects"]
    for kind in ("Role", "RoleBinding", "ServiceAccount"):
        assert plain[kind]["metadata"]["name"] == m.one(kind)["metadata"]["name"]
        assert plain[kind]["metadata"]["namespace"] == m.one(kind)["metadata"]["namespace"]
    assert plain["ServiceAccount"]["automountServiceAccountToken"] is False


# --- deploy/examples/sandbox.yaml --------------------------------------------------------------


def _example_sandbox() -> openshell_pb2.Sandbox:
    """The sandbox the example's header describes."""
    message = openshell_pb2.Sandbox()
    message.metadata.id = "3f1c9a52-7d4e-4b8a-9c61-0e2f5a7b8c90"
    message.metadata.name = "agent-1"
    message.metadata.workspace = "default"
    message.spec.template.image = "ghcr.io/example/agent:1"
    message.spec.environment["MODE"] = "demo"
    message.spec.template.resources.update(
        {"requests": {"cpu": 0.25, "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
    )
    return message


def test_example_sandbox_is_what_the_driver_writes(
    validate_object: Callable[[dict[str, Any], str], None],
) -> None:
    (sandbox,) = _load_all(SANDBOX_EXAMPLE)
    built = sandbox_object(
        _example_sandbox(), version="v1beta1", namespace="shellgate", default_image=""
    )
    assert sandbox == built
    assert problems(sandbox, load_schema("v0.5.6", "v1beta1")) == []
    # spec.podTemplate.spec is a full PodSpec: validate it as one.
    template = sandbox["spec"]["podTemplate"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "template", **template.get("metadata", {})},
        "spec": template["spec"],
    }
    validate_object(pod, "1.37.0")


# --- deploy/Dockerfile ---------------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_dockerfile_is_multi_stage_non_root_and_runs_serve() -> None:
    steps = _instructions()
    froms = [arg for op, arg in steps if op == "FROM"]
    assert len(froms) == 2
    assert froms[0].endswith(" AS builder")
    assert dict(re.findall(r"ARG (\w+)=(\S+)", DOCKERFILE.read_text()))["PYTHON_IMAGE"] == (
        "python:3.11-slim"
    )
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    final_ops = {op: arg for op, arg in final}
    assert final_ops["USER"] == "10001:10001"
    assert json.loads(final_ops["ENTRYPOINT"]) == ["shellgate"]
    assert json.loads(final_ops["CMD"]) == ["serve"]
    copies = [arg for op, arg in final if op == "COPY"]
    assert copies == ["--from=builder /opt/venv /opt/venv"]  # only the venv
    run = " ".join(arg for op, arg in final if op == "RUN")
    assert not re.search(r"apt-get|gcc|build-essential|pip install", run)
    assert "useradd" in run
    assert "--uid 10001" in run


# --- deploy/examples/values-ha.yaml ----------------------------------------------------------


def test_ha_values(ha_values: dict[str, Any]) -> None:
    assert ha_values["replicaCount"] == 3
    assert ha_values["database"] == {"existingSecret": "shellgate-db"}
    assert ha_values["podDisruptionBudget"]["enabled"] is True
    assert ha_values["metrics"]["serviceMonitor"]["enabled"] is True
    assert ha_values["metrics"]["prometheusRule"]["enabled"] is True


# --- deploy/examples/grafana-dashboard.json ----------------------------------------------------


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD_FILE.read_text())
    return dashboard


def _queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def _promql(expr: str) -> str:
    """Turn a Grafana query into PromQL: variables in range selectors, label_values()."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    match = re.fullmatch(r"label_values\((.+), *\w+\)", expr)
    return match.group(1) if match else expr


def test_dashboard_loads_and_has_its_panels() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    titles = " | ".join(p["title"] for p in panels)
    for wanted in (
        "CAS attempts by result",
        "CAS exhausted",
        "CAS attempts per call (p50 / p99)",
        "Store operation latency",
        "Driver events",
        "Reconciles by controller",
        "Reconcile duration",
        "gRPC requests by code",
        "gRPC latency",
        "Sandboxes by phase",
        "watch streams",
        "Change feed lag",
    ):
        assert wanted in titles, wanted
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"], panel["title"]


def test_dashboard_queries_parse_and_use_only_shellgate_metrics() -> None:
    used: set[str] = set()
    for expr in _queries(_dashboard()):
        used |= promqlish.check(_promql(expr), METRICS)
    # Every exposed metric is plotted somewhere, and nothing else is queried.
    assert used == set(METRICS)


def test_dashboard_percentiles() -> None:
    exprs = _queries(_dashboard())
    for histogram in (name for name, kind in METRICS.items() if kind == "histogram"):
        quantiles = {
            q
            for e in exprs
            for q in re.findall(rf"histogram_quantile\((0\.\d+), .*{histogram}_bucket", e)
        }
        assert quantiles == {"0.5", "0.99"}, histogram
