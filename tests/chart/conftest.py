"""Fixtures for the Helm chart and deploy/ tests.

Everything here is offline: helm-python-sdk (Helm v4 as a C library) lints and renders the chart,
kubernetes-validate checks the rendered objects against the bundled Kubernetes schemas, and
jsonschema covers the custom resources (ServiceMonitor, PrometheusRule) kubernetes-validate has
no schema for. A render takes about a millisecond; validation dominates, so a session-wide cache
validates each distinct object once per Kubernetes version.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import helm_python as helm
import pytest
import yaml

from .support import CHART_DIR, HA_VALUES_FILE, NAMESPACE, RELEASE, Manifests, Render

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: helm.Chart) -> Render:
    """Render the chart offline, as `helm template` would, and parse every manifest."""

    def _render(
        values: dict[str, Any] | None = None,
        *,
        name: str = RELEASE,
        namespace: str = NAMESPACE,
    ) -> Manifests:
        rendered = chart.render(values or {}, name=name, namespace=namespace)
        objects: list[dict[str, Any]] = []
        notes = ""
        for path, text in sorted(rendered.items()):
            if path.endswith("NOTES.txt"):
                notes = text
                continue
            objects.extend(doc for doc in yaml.load_all(text, Loader=_LOADER) if doc)
        return Manifests(objects, notes)

    return _render


@pytest.fixture(scope="session")
def ha_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(HA_VALUES_FILE.read_text())
    return values


@pytest.fixture(scope="session")
def validate_object() -> Callable[[dict[str, Any], str], None]:
    """Strict offline validation with kubernetes-validate, once per distinct object and version."""
    import kubernetes_validate

    seen: set[tuple[str, str]] = set()

    def _validate(obj: dict[str, Any], version: str) -> None:
        key = (version, json.dumps(obj, sort_keys=True))
        if key in seen:
            return
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {err.message}")
        seen.add(key)

    return _validate
