"""Alerting rules: deploy/prometheus/shellgate-rules.yaml and the chart's PrometheusRule."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from . import promqlish
from .support import CHART_RULES_FILE, METRICS, REPO, RULES_FILE, Render

PROMTOOL = shutil.which("promtool")
PROMTOOL_TESTS = Path(__file__).parent / "promtool" / "shellgate-rules.test.yaml"
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")


def _rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES_FILE.read_text())
    assert set(document) == {"groups"}
    return [rule for group in document["groups"] for rule in group["rules"]]


def _by_name() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in _rules()}


def test_every_rule_is_a_complete_alert() -> None:
    rules = _rules()
    assert len(rules) == len(_by_name()), "alert names must be unique"
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"Shellgate[A-Za-z]+", rule["alert"])
        assert DURATION.match(rule["for"]), rule["for"]
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}
        assert rule["annotations"]["summary"].strip()
        assert rule["annotations"]["description"].strip()


def test_the_required_alerts_watch_the_right_signals() -> None:
    rules = _by_name()
    cas = rules["ShellgateCASExhausted"]
    assert "rate(shellgate_store_cas_exhausted_total[5m])" in cas["expr"]
    assert cas["expr"].rstrip().endswith("> 0")
    assert cas["for"] == "10m"
    reconcile = rules["ShellgateReconcileErrors"]
    assert 'shellgate_reconcile_total{result="error"}' in reconcile["expr"]
    store = rules["ShellgateStoreUnreachable"]
    assert store["expr"] == "shellgate_store_up == 0"
    assert store["for"] == "2m"
    watch = rules["ShellgateDriverWatchDown"]
    assert watch["expr"] == "shellgate_driver_watch_up == 0"
    assert watch["for"] == "5m"


def test_expressions_parse_and_use_only_shellgate_metrics() -> None:
    used: set[str] = set()
    for rule in _rules():
        used |= promqlish.check(rule["expr"], METRICS)
    assert used == {
        "shellgate_store_cas_exhausted_total",
        "shellgate_reconcile_total",
        "shellgate_store_up",
        "shellgate_driver_watch_up",
    }


@pytest.mark.parametrize(
    "expr",
    [
        "rate(shellgate_reconcile_total[5m]",
        "sum by (x) (shellgate_store_up))",
        "shellgate_store_up ==",
        "shellgate_store_up{pod=a}",
        "rate(shellgate_reconcile_total[five])",
        "rate(shellgate_reconcile_totl[5m])",
        "rat(shellgate_reconcile_total[5m])",
    ],
)
def test_the_checker_rejects_broken_expressions(expr: str) -> None:
    with pytest.raises(ValueError):  # the message varies with the defect
        promqlish.check(expr, METRICS)


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_promtool_check_rules() -> None:
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(RULES_FILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
def test_promtool_rule_unit_tests() -> None:
    """The alerts fire, with the expected labels and annotations, only after their `for`."""
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "test", "rules", str(PROMTOOL_TESTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_chart_copy_is_identical() -> None:
    assert CHART_RULES_FILE.read_bytes() == RULES_FILE.read_bytes(), (
        "charts/shellgate/files/shellgate-rules.yaml must be a copy of "
        "deploy/prometheus/shellgate-rules.yaml"
    )


def test_prometheus_rule_spec_equals_the_rules_file(render: Render) -> None:
    m = render({"metrics": {"prometheusRule": {"enabled": True, "labels": {"release": "kp"}}}})
    rule = m.one("PrometheusRule")
    assert rule["spec"] == yaml.safe_load(RULES_FILE.read_text())
    assert rule["metadata"]["labels"]["release"] == "kp"
    # Helm must not have expanded the Prometheus templates in the annotations.
    assert "{{ $labels.pod }}" in str(rule["spec"])


def test_no_prometheus_rule_by_default(render: Render) -> None:
    assert render().all("PrometheusRule") == []
    assert render().all("ServiceMonitor") == []
