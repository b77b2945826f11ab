"""The Helm chart: lint, renders, schema rejections, guard rails and the objects it produces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

from shellgate.controller.app.cli import build_parser
from shellgate.controller.app.options import ServeOptions, options_from_args
from shellgate.reconcilers.pod_policy import PodPolicy, PodSettings

from .support import CHART_DIR, EVERYTHING_ON, HA_VALUES_FILE, NAMESPACE, RELEASE, Render

POSTGRES_URL = "postgresql://shellgate:secret@db.example:5432/shellgate"
DEFAULT_SANDBOX_POD_CONFIG = {
    "SHELLGATE_GATEWAY_ID": RELEASE,
    "SHELLGATE_SANDBOX_POD_SECURITY_CONTEXT": (
        '{"runAsNonRoot":true,"seccompProfile":{"type":"RuntimeDefault"}}'
    ),
    "SHELLGATE_SANDBOX_CONTAINER_SECURITY_CONTEXT": (
        '{"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}}'
    ),
    "SHELLGATE_SANDBOX_RUNTIME_CLASSES": "",
    "SHELLGATE_SANDBOX_HOST_USERS": "",
    "SHELLGATE_RESERVED_LABEL_PREFIXES": "",
    "SHELLGATE_PROVISIONING_DEADLINE_SECONDS": "600",
}
KEYS = {"existingSecret": "shellgate-keys"}
KUBE_VERSIONS = ["1.27.0", "1.37.0"]  # the chart's kubeVersion floor and the newest bundled


# --- lint ------------------------------------------------------------------------------------


@pytest.mark.parametrize("values_file", [None, HA_VALUES_FILE], ids=["default", "ha"])
def test_lint_has_no_errors_or_warnings(values_file: Any) -> None:
    values = yaml.safe_load(values_file.read_text()) if values_file else None
    report = helm.lint(CHART_DIR, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    # Severity 1 is INFO ("icon is recommended"); 2 is WARNING, 3 ERROR.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


# --- renders and validation ------------------------------------------------------------------


def test_default_render_is_single_replica_on_sqlite(render: Render) -> None:
    m = render()
    assert m.kinds == {
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "Role",
        "RoleBinding",
        "Secret",
        "Service",
        "ServiceAccount",
    }
    deployment = m.one("Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    mounts = {v["name"]: v["mountPath"] for v in m.container["volumeMounts"]}
    assert mounts == {"tmp": "/tmp", "data": "/var/lib/shellgate", "tls": "/etc/shellgate/tls"}
    volumes = {v["name"]: v for v in m.pod_spec["volumes"]}
    pvc = m.one("PersistentVolumeClaim")
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert "topologySpreadConstraints" not in m.pod_spec
    assert m.all("PodDisruptionBudget") == []


def test_ha_values_render_three_replicas_on_postgres(
    render: Render, ha_values: dict[str, Any]
) -> None:
    m = render(ha_values)
    assert m.kinds == {
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    }
    deployment = m.one("Deployment")
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # The Secrets are the user's; no data volume on Postgres, the sealing key read-only.
    assert [v["name"] for v in m.pod_spec["volumes"]] == ["tmp", "encryption-key", "tls"]
    db_env = _env(m.container)["SHELLGATE_DATABASE_URL"]
    assert db_env["valueFrom"]["secretKeyRef"] == {"name": "shellgate-db", "key": "url"}
    pdb = m.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    (spread,) = m.pod_spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    service = m.one("Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert "clusterIP" not in service["spec"]  # load-balanced, not headless
    assert "headless" in m.notes.lower()


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("case", ["default", "ha", "everything-on", "cluster-wide", "local"])
def test_rendered_objects_validate_strictly(
    render: Render,
    ha_values: dict[str, Any],
    validate_object: Callable[[dict[str, Any], str], None],
    case: str,
    kube_version: str,
) -> None:
    values = {
        "default": {},
        "ha": ha_values,
        "everything-on": EVERYTHING_ON,
        "cluster-wide": {"rbac": {"clusterWide": True}},
        "local": {"driver": "local", "persistence": {"enabled": False}},
    }[case]
    m = render(values)
    for obj in m.objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            _validate_monitoring_resource(obj)
        else:
            validate_object(obj, kube_version)
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE


# Basic shape of the prometheus-operator resources (kubernetes-validate has no CRD schemas).
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
_METADATA = {
    "type": "object",
    "required": ["name", "namespace", "labels"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _LABELS},
}
_DURATION = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w|y))+$"}
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "required": ["matchLabels"],
                    "properties": {"matchLabels": _LABELS},
                },
                "namespaceSelector": {
                    "type": "object",
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port", "path"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                        },
                    },
                },
            },
        },
    },
}
PROMETHEUS_RULE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "metadata": _METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "interval": _DURATION,
                            "rules": {
                                "type": "array",
                                "minItems": 1,
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["alert", "expr"],
                                    "properties": {
                                        "alert": {"type": "string", "pattern": "^[A-Za-z]+$"},
                                        "expr": {"type": "string", "minLength": 1},
                                        "for": _DURATION,
                                        "labels": _LABELS,
                                        "annotations": _LABELS,
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    },
}


def _validate_monitoring_resource(obj: dict[str, Any]) -> None:
    schema = {"ServiceMonitor": SERVICE_MONITOR_SCHEMA, "PrometheusRule": PROMETHEUS_RULE_SCHEMA}
    jsonschema.validate(obj, schema[obj["kind"]])


def test_service_monitor_scrapes_the_http_port(render: Render) -> None:
    m = render({"metrics": {"serviceMonitor": {"enabled": True, "interval": "15s"}}})
    monitor = m.one("ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "http"
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"
    ports = {p["name"]: p for p in m.one("Service")["spec"]["ports"]}
    assert ports["http"]["port"] == 9090
    assert monitor["spec"]["selector"]["matchLabels"] == m.one("Service")["spec"]["selector"]


# --- values.schema.json ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "pointer"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"replicaCount": 0}, "/replicaCount"),
        ({"replicaCount": 1.5}, "/replicaCount"),
        ({"driver": "docker"}, "/driver"),
        ({"logFormat": "xml"}, "/logFormat"),
        ({"database": {"url": "mysql://db/shellgate"}}, "/database/url"),
        ({"rbac": {"clusterWide": "yes"}}, "/rbac/clusterWide"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"terminationGracePeriodSeconds": 5}, "/terminationGracePeriodSeconds"),
        ({"extraEnv": {"FOO": "bar"}}, "/extraEnv"),
        ({"metrics": {"serviceMonitor": {"enabled": "true"}}}, "/metrics/serviceMonitor/enabled"),
        ({"replicas": 3}, "additional properties 'replicas'"),
        ({"sandboxPods": {"gatewayId": "not a label"}}, "/sandboxPods/gatewayId"),
        ({"sandboxPods": {"hostUsers": ["false"]}}, "/sandboxPods/hostUsers/0"),
        ({"sandboxPods": {"reservedLabelPrefixes": ["no-slash"]}}, "/sandboxPods/reserved"),
        ({"sandboxPods": {"provisioningDeadlineSeconds": -1}}, "/sandboxPods/provisioning"),
        ({"sandboxPods": {"podSecurityContext": "restricted"}}, "/sandboxPods/podSecurity"),
        ({"sandboxPods": {"privileged": True}}, "additional properties 'privileged'"),
    ],
)
def test_schema_rejects_wrong_values(
    chart: helm.Chart, render: Render, values: dict[str, Any], pointer: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=pointer):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        render(values)


def test_schema_accepts_the_defaults_and_ha_values(
    chart: helm.Chart, ha_values: dict[str, Any]
) -> None:
    chart.validate_schema({})
    chart.validate_schema(ha_values)
    chart.validate_schema(EVERYTHING_ON)


# --- guard rails -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "database",
    [
        {},
        {"url": "sqlite:////var/lib/shellgate/shellgate.db"},
        {"url": "sqlite:///./shellgate.db"},
    ],
    ids=["default", "sqlite-absolute", "sqlite-relative"],
)
def test_several_replicas_on_sqlite_fail_with_a_clear_message(
    render: Render, database: dict[str, Any]
) -> None:
    with pytest.raises(helm.HelmRenderError) as caught:
        render({"replicaCount": 3, "database": database})
    message = str(caught.value)
    assert "replicaCount=3 needs Postgres" in message
    assert "SQLite" in message
    assert "database.existingSecret" in message


@pytest.mark.parametrize(
    "database",
    [
        {"existingSecret": "shellgate-db"},
        {"url": POSTGRES_URL},
        {"url": "postgres://shellgate@db.example/shellgate"},
    ],
    ids=["existing-secret", "postgresql-url", "postgres-url"],
)
def test_several_replicas_on_postgres_render_a_pdb(
    render: Render, database: dict[str, Any]
) -> None:
    m = render({"replicaCount": 3, "database": database, "encryption": KEYS})
    assert m.one("Deployment")["spec"]["replicas"] == 3
    assert m.one("PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert m.all("PersistentVolumeClaim") == []
    assert "Recreate" not in str(m.one("Deployment")["spec"]["strategy"])


def test_pdb_only_with_more_than_one_replica(render: Render) -> None:
    single = render(
        {
            "database": {"url": POSTGRES_URL},
            "encryption": KEYS,
            "podDisruptionBudget": {"enabled": True},
        }
    )
    assert single.all("PodDisruptionBudget") == []
    several = render({"replicaCount": 2, "database": {"url": POSTGRES_URL}, "encryption": KEYS})
    assert several.one("PodDisruptionBudget")
    disabled = render(
        {
            "replicaCount": 2,
            "database": {"url": POSTGRES_URL},
            "encryption": KEYS,
            "podDisruptionBudget": {"enabled": False},
        }
    )
    assert disabled.all("PodDisruptionBudget") == []


def test_pdb_min_available_replaces_max_unavailable(render: Render) -> None:
    m = render(
        {
            "replicaCount": 3,
            "database": {"url": POSTGRES_URL},
            "encryption": KEYS,
            "podDisruptionBudget": {"minAvailable": 2},
        }
    )
    assert m.one("PodDisruptionBudget")["spec"] == {
        "minAvailable": 2,
        "selector": m.one("Deployment")["spec"]["selector"],
    }


def test_empty_database_url_fails(render: Render) -> None:
    with pytest.raises(helm.HelmRenderError, match=r"set database\.url"):
        render({"database": {"url": ""}})


def test_chart_secret_holds_the_url_under_key_url(render: Render) -> None:
    import base64

    m = render({"database": {"url": POSTGRES_URL}, "encryption": KEYS})
    secret = m.one("Secret")
    assert base64.b64decode(secret["data"]["url"]).decode() == POSTGRES_URL
    ref = _env(m.container)["SHELLGATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": "url"}


def test_existing_secret_wins_and_no_secret_is_rendered(render: Render) -> None:
    m = render({"database": {"existingSecret": "mine", "url": POSTGRES_URL}, "encryption": KEYS})
    assert m.all("Secret") == []
    ref = _env(m.container)["SHELLGATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "mine", "key": "url"}


def test_sqlite_emptydir_is_opt_in(render: Render) -> None:
    m = render({"persistence": {"enabled": False}})
    assert m.all("PersistentVolumeClaim") == []
    volumes = {v["name"]: v for v in m.pod_spec["volumes"]}
    assert volumes["data"]["emptyDir"] == {}
    assert "WARNING" in m.notes


def test_sqlite_existing_claim(render: Render) -> None:
    m = render({"persistence": {"existingClaim": "my-claim"}})
    assert m.all("PersistentVolumeClaim") == []
    volumes = {v["name"]: v for v in m.pod_spec["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "my-claim"


# --- pod ------------------------------------------------------------------------------------


def test_pod_security_is_restricted(render: Render) -> None:
    m = render()
    pod = m.pod_spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 10001
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    container = m.container["securityContext"]
    assert container["runAsNonRoot"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["readOnlyRootFilesystem"] is True
    assert container["capabilities"] == {"drop": ["ALL"]}
    assert container["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in container
    tmp = {v["name"]: v for v in m.pod_spec["volumes"]}["tmp"]
    assert "emptyDir" in tmp
    assert {"name": "tmp", "mountPath": "/tmp"} in m.container["volumeMounts"]


def test_probes_ports_and_shutdown(render: Render) -> None:
    m = render()
    c = m.container
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["port"] == "http"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"grpc": 8080, "http": 9090}
    assert m.pod_spec["terminationGracePeriodSeconds"] == 15
    assert m.pod_spec["terminationGracePeriodSeconds"] > 10  # shellgate stops within 10 s
    assert c["args"] == ["serve"]
    assert c["image"] == "ghcr.io/shellgate/shellgate:0.1.0"


def test_configuration_reaches_the_process(render: Render) -> None:
    m = render({"sandboxImage": "example/sandbox:2", "extraEnv": [{"name": "X", "value": "y"}]})
    config = m.one("ConfigMap")["data"]
    assert config == {
        "SHELLGATE_LISTEN": "0.0.0.0:8080",
        "SHELLGATE_HTTP_LISTEN": "0.0.0.0:9090",
        "SHELLGATE_DRIVER": "kubernetes",
        "SHELLGATE_LOG_FORMAT": "json",
        "SHELLGATE_STATE_DIR": "/var/lib/shellgate",
        "SHELLGATE_NAMESPACE": NAMESPACE,
        "SHELLGATE_SANDBOX_IMAGE": "example/sandbox:2",
        **DEFAULT_SANDBOX_POD_CONFIG,
    }
    assert m.container["envFrom"] == [
        {"configMapRef": {"name": m.one("ConfigMap")["metadata"]["name"]}}
    ]
    env = _env(m.container)
    assert env["SHELLGATE_REPLICA_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["X"] == {"name": "X", "value": "y"}
    assert list(env)[-1] == "X"  # extraEnv comes last, so it can override


def test_config_checksum_rolls_pods_on_config_changes(render: Render) -> None:
    def checksums(values: dict[str, Any]) -> dict[str, str]:
        annotations = render(values).one("Deployment")["spec"]["template"]["metadata"]
        return {k: v for k, v in annotations["annotations"].items() if k.startswith("checksum/")}

    base = checksums({})
    assert set(base) == {"checksum/config"}
    assert checksums({"sandboxImage": "other"})["checksum/config"] != base["checksum/config"]
    assert checksums({"logFormat": "text"})["checksum/config"] != base["checksum/config"]
    assert checksums({"resources": {}}) == base  # not configuration of the process


def test_no_pod_annotation_is_derived_from_a_secret(render: Render) -> None:
    """A plain hash of the rendered Secret on the pod let anyone who can read pods guess a
    weak database password offline."""
    weak = {"database": {"url": "postgresql://shellgate:hunter2@db:5432/shellgate"}}
    rendered = render({**weak, "encryption": KEYS})
    annotations = rendered.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    other = render({"database": {"url": POSTGRES_URL}, "encryption": KEYS})
    other_annotations = other.one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations == other_annotations


def test_postgres_needs_the_sealing_key_and_mounts_it_read_only(render: Render) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmRenderError, match=r"encryption\.existingSecret"):
        render({"database": {"url": POSTGRES_URL}})
    m = render({"database": {"url": POSTGRES_URL}, "encryption": KEYS})
    env = _env(m.container)
    assert env["SHELLGATE_ENCRYPTION_KEY_FILE"]["value"] == "/etc/shellgate/encryption/key"
    [mount] = [v for v in m.container["volumeMounts"] if v["name"] == "encryption-key"]
    assert mount == {
        "name": "encryption-key",
        "mountPath": "/etc/shellgate/encryption",
        "readOnly": True,
    }
    [volume] = [v for v in m.pod_spec["volumes"] if v["name"] == "encryption-key"]
    assert volume["secret"]["secretName"] == "shellgate-keys"


# --- RBAC ------------------------------------------------------------------------------------

EXPECTED_RULES = [
    {
        "apiGroups": ["agents.x-k8s.io"],
        "resources": ["sandboxes"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]


def test_role_grants_exactly_the_driver_verbs(render: Render) -> None:
    m = render()
    role = m.one("Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == EXPECTED_RULES
    binding = m.one("RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    account = m.one("ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert m.pod_spec["serviceAccountName"] == account["metadata"]["name"]
    assert m.pod_spec["automountServiceAccountToken"] is True


@pytest.mark.parametrize("values", [{}, {"rbac": {"clusterWide": True}}], ids=["role", "cluster"])
def test_pods_are_only_read_exec_ed_into_and_logged(render: Render, values: dict[str, Any]) -> None:
    """Exec and logs need exactly these; shellgate never creates, changes or deletes pods
    (the agent-sandbox controller does), nor attaches or forwards ports."""
    m = render(values)
    role = m.one("ClusterRole" if values else "Role")
    on_pods = {
        (resource, verb)
        for rule in role["rules"]
        if "" in rule["apiGroups"]
        for resource in rule["resources"]
        if resource.startswith("pods") or resource == "*"
        for verb in rule["verbs"]
    }
    assert on_pods == {("pods", "get"), ("pods/exec", "create"), ("pods/log", "get")}


def test_no_cluster_scoped_rbac_by_default(render: Render, ha_values: dict[str, Any]) -> None:
    for values in ({}, ha_values):
        kinds = render(values).kinds
        assert "ClusterRole" not in kinds
        assert "ClusterRoleBinding" not in kinds


def test_cluster_wide_rbac_replaces_the_role(render: Render) -> None:
    m = render({"rbac": {"clusterWide": True}})
    assert m.all("Role") == []
    assert m.all("RoleBinding") == []
    assert m.one("ClusterRole")["rules"] == EXPECTED_RULES
    binding = m.one("ClusterRoleBinding")
    assert binding["roleRef"]["kind"] == "ClusterRole"
    assert binding["subjects"][0]["namespace"] == NAMESPACE


def test_role_lives_in_the_sandbox_namespace(render: Render) -> None:
    m = render({"sandboxNamespace": "sandboxes"})
    assert m.one("Role")["metadata"]["namespace"] == "sandboxes"
    binding = m.one("RoleBinding")
    assert binding["metadata"]["namespace"] == "sandboxes"
    assert binding["subjects"][0]["namespace"] == NAMESPACE
    assert m.one("ConfigMap")["data"]["SHELLGATE_NAMESPACE"] == "sandboxes"


@pytest.mark.parametrize(
    "values",
    [{"driver": "local"}, {"rbac": {"create": False}}],
    ids=["local-driver", "rbac-off"],
)
def test_no_rbac_unless_kubernetes_driver_and_rbac_create(
    render: Render, values: dict[str, Any]
) -> None:
    kinds = render(values).kinds
    assert not kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}


def test_local_driver_mounts_no_token(render: Render) -> None:
    m = render({"driver": "local"})
    assert m.pod_spec["automountServiceAccountToken"] is False
    assert m.one("ConfigMap")["data"]["SHELLGATE_DRIVER"] == "local"
    assert "SHELLGATE_NAMESPACE" not in m.one("ConfigMap")["data"]


# --- services and network --------------------------------------------------------------------


def test_service_balances_across_all_replicas(render: Render) -> None:
    m = render({"replicaCount": 3, "database": {"existingSecret": "db"}, "encryption": KEYS})
    service = m.one("Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"] == m.one("Deployment")["spec"]["selector"]["matchLabels"]
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {"grpc": (8080, "grpc"), "http": (9090, "http")}
    # No ready-gating or leader label in the selector: every pod gets traffic.
    assert set(service["spec"]["selector"]) == {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
    }


def test_headless_service_is_opt_in(render: Render) -> None:
    assert len(render().all("Service")) == 1
    services = {
        s["metadata"]["name"]: s for s in render({"service": {"headless": True}}).all("Service")
    }
    assert services[f"{RELEASE}-headless"]["spec"]["clusterIP"] == "None"


def test_network_policy(render: Render) -> None:
    # On by default, and admitting no gRPC client until the values name one.
    (default_http,) = render().one("NetworkPolicy")["spec"]["ingress"]
    assert default_http["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert render({"networkPolicy": {"enabled": False}}).all("NetworkPolicy") == []
    policy = render(EVERYTHING_ON).one("NetworkPolicy")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    grpc, http = policy["spec"]["ingress"]
    assert grpc["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert grpc["from"] == EVERYTHING_ON["networkPolicy"]["grpcFrom"]
    assert http["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert "from" not in http


def test_release_names(render: Render) -> None:
    assert render(name="prod").one("Deployment")["metadata"]["name"] == "prod-shellgate"
    assert render(name="shellgate").one("Deployment")["metadata"]["name"] == "shellgate"
    m = render({"fullnameOverride": "gw"}, name="prod")
    assert m.one("Secret")["metadata"]["name"] == "gw-db"


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# --- sandbox pods ----------------------------------------------------------------------------


def _served_options(config: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> ServeOptions:
    """What ``shellgate serve`` makes of the ConfigMap's variables."""
    for name, value in config.items():
        monkeypatch.setenv(name, value)
    return options_from_args(build_parser().parse_args(["serve"]))


def test_sandbox_pod_defaults_reach_the_process_as_the_built_in_defaults(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = render().one("ConfigMap")["data"]
    options = _served_options(config, monkeypatch)
    assert options.pod_settings == PodSettings(gateway_id=RELEASE)
    assert options.provisioning_deadline == 600.0


def test_sandbox_pod_settings_reach_the_process(
    render: Render, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = {
        "sandboxPods": {
            "gatewayId": "blue",
            "podSecurityContext": {"runAsUser": 1000, "seccompProfile": None},
            "containerSecurityContext": {"allowPrivilegeEscalation": None, "capabilities": None},
            "runtimeClasses": ["gvisor", "kata"],
            "hostUsers": [False],
            "reservedLabelPrefixes": ["mesh.example.com/"],
            "provisioningDeadlineSeconds": 120,
        }
    }
    options = _served_options(render(values).one("ConfigMap")["data"], monkeypatch)
    assert options.pod_settings == PodSettings(
        gateway_id="blue",
        pod_security_context={"runAsNonRoot": True, "runAsUser": 1000},
        container_security_context={},
        policy=PodPolicy(
            extra_reserved_prefixes=("mesh.example.com/",),
            runtime_classes=frozenset({"gvisor", "kata"}),
            host_users=frozenset({False}),
        ),
    )
    assert options.provisioning_deadline == 120.0


def test_the_gateway_id_follows_the_release_name(render: Render) -> None:
    config = render(name="team-b").one("ConfigMap")["data"]
    assert config["SHELLGATE_GATEWAY_ID"] == "team-b"
