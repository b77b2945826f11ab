"""The chart's secure defaults: TLS from a Secret or cert-manager, client certificates, OIDC
values reaching ``shellgate serve`` under the right variables, the NetworkPolicy, and the
renders that must fail (no authentication, an exposed Service without TLS)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

from shellgate.controller.app.cli import build_parser

from .support import DEPLOY_DIR, NAMESPACE, RELEASE, Render

KEYCLOAK_VALUES_FILE = DEPLOY_DIR / "examples" / "values-keycloak.yaml"
KUBE_VERSIONS = ["1.27.0", "1.37.0"]
NO_AUTH = {"auth": {"mtls": False}, "tls": {"clientAuth": False}}

CERTIFICATE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Certificate"},
        "spec": {
            "type": "object",
            "required": ["secretName", "dnsNames", "issuerRef"],
            "properties": {
                "secretName": {"type": "string", "minLength": 1},
                "dnsNames": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                "duration": {"type": "string", "pattern": "^([0-9]+(h|m|s))+$"},
                "renewBefore": {"type": "string", "pattern": "^([0-9]+(h|m|s))+$"},
                "issuerRef": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {"kind": {"enum": ["Issuer", "ClusterIssuer"]}},
                },
            },
        },
    },
}


def _env(render: Render, values: dict[str, Any]) -> dict[str, Any]:
    container = render(values).container
    return {e["name"]: e.get("value") for e in container["env"]}


def _serve_variables() -> set[str]:
    """Every environment variable ``shellgate serve`` reads a flag from."""
    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    return {
        "SHELLGATE_" + action.dest.upper()
        for action in serve._actions
        if action.option_strings and action.dest != "help"
    }


def test_tls_and_client_certificates_are_on_by_default(render: Render) -> None:
    m = render()
    env = {e["name"]: e.get("value") for e in m.container["env"]}
    assert env["SHELLGATE_TLS_CERT"] == "/etc/shellgate/tls/tls.crt"
    assert env["SHELLGATE_TLS_KEY"] == "/etc/shellgate/tls/tls.key"
    assert env["SHELLGATE_TLS_CLIENT_CA"] == "/etc/shellgate/tls/ca.crt"
    assert env["SHELLGATE_ENABLE_MTLS_AUTH"] == "true"
    assert not any(name.startswith("SHELLGATE_OIDC_") for name in env)
    assert "SHELLGATE_ALLOW_UNAUTHENTICATED" not in env
    volume = {v["name"]: v for v in m.pod_spec["volumes"]}["tls"]
    assert volume["secret"]["secretName"] == f"{RELEASE}-tls"
    mount = {v["name"]: v for v in m.container["volumeMounts"]}["tls"]
    # A directory mount, never subPath: only a directory sees the kubelet swap in a renewal.
    assert mount == {"name": "tls", "mountPath": "/etc/shellgate/tls", "readOnly": True}
    assert m.all("Certificate") == []


def test_every_variable_the_chart_sets_is_one_serve_reads(render: Render) -> None:
    values = {
        "auth": {"oidc": {"issuer": "https://idp.example/realms/x", "scopesClaim": "scope"}},
        "allowUnauthenticated": True,
        "encryption": {"existingSecret": "keys"},
        "sandboxImage": "x",
    }
    m = render(values)
    chart = set(m.one("ConfigMap")["data"]) | {e["name"] for e in m.container["env"]}
    assert chart - _serve_variables() == set()


def test_oidc_values_reach_the_process(render: Render) -> None:
    oidc = {
        "issuer": "https://keycloak.example/realms/openshell",
        "audience": "gw",
        "rolesClaim": "resource_access.gw.roles",
        "adminRole": "ops",
        "userRole": "dev",
        "scopesClaim": "scope",
        "jwksTtlSeconds": 600,
    }
    env = _env(render, {"auth": {"oidc": oidc}})
    assert {k: v for k, v in env.items() if k.startswith("SHELLGATE_OIDC_")} == {
        "SHELLGATE_OIDC_ISSUER": oidc["issuer"],
        "SHELLGATE_OIDC_AUDIENCE": "gw",
        "SHELLGATE_OIDC_ROLES_CLAIM": "resource_access.gw.roles",
        "SHELLGATE_OIDC_ADMIN_ROLE": "ops",
        "SHELLGATE_OIDC_USER_ROLE": "dev",
        "SHELLGATE_OIDC_SCOPES_CLAIM": "scope",
        "SHELLGATE_OIDC_JWKS_TTL": "600",
    }


def test_cert_manager_writes_the_secret_the_pod_mounts(render: Render) -> None:
    issuer = {"name": "internal-ca", "kind": "ClusterIssuer"}
    m = render(
        {
            "tls": {
                "secretName": "gw-cert",
                "certManager": {"issuerRef": issuer, "dnsNames": ["gw.example.com"]},
            },
            "service": {"headless": True},
        }
    )
    certificate = m.one("Certificate")
    jsonschema.validate(certificate, CERTIFICATE_SCHEMA)
    spec = certificate["spec"]
    assert spec["secretName"] == "gw-cert"
    assert spec["issuerRef"] == issuer
    service = f"{RELEASE}.{NAMESPACE}.svc"
    assert {service, f"{RELEASE}-headless.{NAMESPACE}.svc", "gw.example.com"} <= set(
        spec["dnsNames"]
    )
    volumes = {v["name"]: v for v in m.pod_spec["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "gw-cert"


def test_network_policy_admits_only_the_named_namespaces_and_pods(render: Render) -> None:
    peers = [{"podSelector": {"matchLabels": {"app": "cli"}}}]
    policy = render(
        {"networkPolicy": {"grpcFrom": peers, "grpcFromNamespaces": ["agents", "ci"]}}
    ).one("NetworkPolicy")
    grpc, http = policy["spec"]["ingress"]
    assert grpc["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert grpc["from"] == [
        *peers,
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agents"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ci"}}},
    ]
    assert http["ports"] == [{"port": "http", "protocol": "TCP"}]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (NO_AUTH, "no authentication is configured"),
        ({"tls": {"enabled": False, "clientAuth": False}}, "auth.mtls"),
        ({"tls": {"enabled": False}, **{"auth": {"mtls": False}}}, "tls.clientAuth needs"),
        ({"tls": {"clientAuth": False}}, "auth.mtls"),
    ],
)
def test_renders_without_authentication_or_with_half_of_mtls_fail(
    render: Render, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmRenderError, match=message):
        render(values)


def test_allow_unauthenticated_is_explicit_and_reaches_the_process(render: Render) -> None:
    env = _env(render, {**NO_AUTH, "allowUnauthenticated": True})
    assert env["SHELLGATE_ALLOW_UNAUTHENTICATED"] == "true"
    assert "SHELLGATE_ENABLE_MTLS_AUTH" not in env
    assert "allowUnauthenticated=true" in render({**NO_AUTH, "allowUnauthenticated": True}).notes


@pytest.mark.parametrize("service_type", ["LoadBalancer", "NodePort"])
def test_schema_refuses_an_exposed_service_without_tls(
    chart: helm.Chart, render: Render, service_type: str
) -> None:
    plaintext = {
        "service": {"type": service_type},
        "tls": {"enabled": False, "clientAuth": False},
        "auth": {"mtls": False},
        "allowUnauthenticated": True,
    }
    with pytest.raises(helm.HelmValuesError, match="/tls/enabled"):
        chart.validate_schema(plaintext)
    with pytest.raises(helm.HelmValuesError):
        render(plaintext)
    assert render({"service": {"type": service_type}}).one("Service")["spec"]["type"] == (
        service_type
    )
    # Inside the cluster only, plaintext stays possible (behind a mesh, say).
    assert render({**plaintext, "service": {"type": "ClusterIP"}}).one("Deployment")


@pytest.mark.parametrize(
    ("values", "pointer"),
    [
        ({"auth": {"oidc": {"issuer": "http://keycloak.example/realms/x"}}}, "/auth/oidc/issuer"),
        ({"auth": {"oidc": {"jwksTtlSeconds": 0}}}, "/auth/oidc/jwksTtlSeconds"),
        ({"auth": {"mtls": "yes"}}, "/auth/mtls"),
        ({"tls": {"certManager": {"issuerRef": {"kind": "ClusterIssuer"}}}}, "issuerRef"),
        ({"tls": {"certManager": {"issuerRef": {"name": "x", "kind": "Vault"}}}}, "issuerRef"),
        ({"tls": {"certificate": "x"}}, "additional properties 'certificate'"),
        ({"allowUnauthenticated": "true"}, "/allowUnauthenticated"),
        ({"networkPolicy": {"grpcFromNamespaces": [""]}}, "/networkPolicy/grpcFromNamespaces"),
    ],
)
def test_schema_rejects_wrong_security_values(
    chart: helm.Chart, values: dict[str, Any], pointer: str
) -> None:
    with pytest.raises(helm.HelmValuesError, match=pointer):
        chart.validate_schema(values)


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_keycloak_example_renders_and_validates(
    render: Render,
    chart: helm.Chart,
    validate_object: Callable[[dict[str, Any], str], None],
    kube_version: str,
) -> None:
    values = yaml.safe_load(KEYCLOAK_VALUES_FILE.read_text())
    chart.validate_schema(values)
    m = render(values)
    jsonschema.validate(m.one("Certificate"), CERTIFICATE_SCHEMA)
    for obj in m.objects:
        if obj["kind"] != "Certificate":
            validate_object(obj, kube_version)
    env = {e["name"]: e.get("value") for e in m.container["env"]}
    assert env["SHELLGATE_OIDC_ISSUER"] == "https://keycloak.example.com/realms/openshell"
    assert "SHELLGATE_ENABLE_MTLS_AUTH" not in env and "SHELLGATE_TLS_CLIENT_CA" not in env
    assert "SHELLGATE_TLS_CERT" in env
