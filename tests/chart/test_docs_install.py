"""docs/install-kubernetes.md must match the chart: value names, Secret key, ports, RBAC, alerts."""

from __future__ import annotations

import re
from typing import Any

import yaml

from .support import CHART_DIR, DOCS_FILE, REPO, RULES_FILE, Render

VALUE_PATH = re.compile(r"^[a-z][A-Za-z]*(\.[a-z][A-Za-z]*)+$")


def _docs() -> str:
    return DOCS_FILE.read_text()


def _code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text)


def _values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    return values


def test_every_value_the_docs_name_exists() -> None:
    values = _values()
    named = set()
    for span in _code_spans(_docs()):
        for word in re.split(r"[\s=:,]+", span):
            if VALUE_PATH.match(word) and word.split(".")[0] in values:
                named.add(word)
    assert len(named) > 20
    for path in sorted(named):
        node: Any = values
        for key in path.split("."):
            assert isinstance(node, dict), f"{path}: {key} is below a non-mapping"
            assert key in node, f"docs name {path}, which values.yaml does not have"
            node = node[key]


def test_every_top_level_value_is_documented() -> None:
    docs = _docs()
    skipped = {"nameOverride", "fullnameOverride", "imagePullSecrets", "podAnnotations"}
    skipped |= {"podLabels", "priorityClassName", "nodeSelector", "tolerations", "affinity"}
    skipped |= {"podSecurityContext", "securityContext", "livenessProbe", "readinessProbe"}
    skipped |= {"startupProbe", "terminationGracePeriodSeconds", "persistence"}
    for key in set(_values()) - skipped:
        assert f"`{key}" in docs, f"values.yaml key {key} is not in the docs"


def test_secret_name_and_key(render: Render, ha_values: dict[str, Any]) -> None:
    docs = _docs()
    secret = ha_values["database"]["existingSecret"]
    assert f"create secret generic {secret} \\\n" in docs
    assert "--from-literal=url=postgresql://" in docs
    env = {e["name"]: e for e in render(ha_values).container["env"]}
    assert env["SHELLGATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": secret,
        "key": "url",
    }


def test_commands_point_at_real_files() -> None:
    docs = _docs()
    assert (
        "helm install shellgate charts/shellgate -n shellgate -f deploy/examples/values-ha.yaml"
        in (docs)
    )
    # Repository paths; `deploy/shellgate` after `rollout status` is the Deployment.
    for path in re.findall(r"(?<!status )\b(?:charts|deploy)/[\w./-]+", docs):
        assert (REPO / path.rstrip(".")).exists(), path


def test_ports(render: Render) -> None:
    docs = _docs()
    service = render().one("Service")
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"grpc": 8080, "http": 9090}
    assert "port `grpc` 8080 and port `http` 9090" in docs
    assert "shellgate.shellgate.svc:8080" in docs
    assert "port-forward svc/shellgate 8080:8080" in docs
    assert "Scrape every pod on port 9090 (the Service port named `http`), path `/metrics`" in docs


def test_environment_variables(render: Render) -> None:
    set_by_chart: set[str] = set()
    sealing_key = {"encryption": {"existingSecret": "keys"}}
    security = {"auth": {"oidc": {"issuer": "https://idp.example"}}, "allowUnauthenticated": True}
    for values in ({"sandboxImage": "x"}, {"sandboxImage": "x", **sealing_key}, security):
        m = render(values)
        set_by_chart |= set(m.one("ConfigMap")["data"]) | {e["name"] for e in m.container["env"]}
    documented = set(re.findall(r"SHELLGATE_[A-Z_]+", _docs()))
    assert documented == set_by_chart


def test_rbac_table_matches_the_role(render: Render) -> None:
    docs = _docs()
    rules = render().one("Role")["rules"]
    for rule in rules:
        group = rule["apiGroups"][0]
        row = f"| `{group}` | `{rule['resources'][0]}` | {', '.join(rule['verbs'])} |"
        if not group:
            row = row.replace("| `` |", '| `""` (core) |')
        assert row in docs


def test_alert_table_matches_the_rules() -> None:
    rules = yaml.safe_load(RULES_FILE.read_text())["groups"][0]["rules"]
    documented = re.findall(r"^\| `(Shellgate\w+)` \|.*\| (\w+) \| (\w+) \|$", _docs(), re.M)
    assert documented == [(r["alert"], r["for"], r["labels"]["severity"]) for r in rules]


def test_single_replica_guard_message_is_quoted(render: Render) -> None:
    import helm_python as helm

    try:
        render({"replicaCount": 3})
    except helm.HelmRenderError as err:
        message = str(err).split("validate.yaml:2:4): ", 1)[1]
    else:
        raise AssertionError("replicaCount=3 on SQLite rendered")
    quoted = re.search(r"```text\n(shellgate: replicaCount=3.*?)\n```", _docs(), re.S)
    assert quoted is not None
    assert " ".join(quoted.group(1).split()) == message
