"""Structural validation against a CRD's ``openAPIV3Schema``, as kube-apiserver applies it.

kmock accepts any object, so the driver's objects and patches are checked here against the
real agent-sandbox CRDs (vendored under ``tests/k8s/crds/``). The API server does two things
with a custom resource: it **prunes** every field its structural schema does not declare
(silently: the field is simply gone), then it **validates** types, enums and required fields.
A pruned field is the dangerous one, since nothing fails and the setting is lost, so here an
undeclared field is an error too.

What is modelled: ``type`` (object, array, string, integer, number, boolean), ``properties``,
``additionalProperties`` (maps), ``items``, ``required``, ``enum``, ``nullable``,
``x-kubernetes-int-or-string`` (an integer or a string, never a float),
``x-kubernetes-preserve-unknown-fields`` and ``x-kubernetes-embedded-resource`` (apiVersion,
kind and metadata are kept). The root's ``metadata`` is the API server's own ObjectMeta and
is checked only for the fields the driver writes. CEL rules, formats and numeric bounds are
not modelled.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

CRD_DIR = Path(__file__).resolve().parent.parent / "k8s" / "crds"
CRD_FILES = {
    "v0.5.6": CRD_DIR / "agent-sandbox-v0.5.6-sandboxes.yaml",
    "v0.4.6": CRD_DIR / "agent-sandbox-v0.4.6-sandboxes.yaml",
}
ROOT_METADATA_FIELDS = {
    "name": "string",
    "namespace": "string",
    "labels": "map",
    "annotations": "map",
    "resourceVersion": "string",
    "uid": "string",
    "finalizers": "list",
}
_EMBEDDED = ("apiVersion", "kind", "metadata")


def load_schema(release: str, version: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``version`` in the vendored CRD of ``release``."""
    crd = yaml.safe_load(CRD_FILES[release].read_text())
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            return dict(served["schema"]["openAPIV3Schema"])
    raise KeyError(f"{release} has no {version}")


def problems(value: Any, schema: Mapping[str, Any], *, patch: bool = False) -> list[str]:
    """Every way ``value`` would be pruned or refused; empty when the API server keeps it all.

    ``patch``: ``value`` is a JSON merge patch, so ``null`` deletes a field and required
    fields may be absent.
    """
    found = list(_check(value, schema, "", patch=patch, root=True))
    return found


def _check(
    value: Any, schema: Mapping[str, Any], path: str, *, patch: bool, root: bool = False
) -> Iterator[str]:
    if value is None:
        if not (patch or schema.get("nullable")):
            yield f"{path or '.'}: null is not allowed"
        return
    if schema.get("x-kubernetes-int-or-string"):
        if isinstance(value, bool) or not isinstance(value, int | str):
            yield f"{path}: must be an integer or a string, got {type(value).__name__} {value!r}"
        return
    kind = schema.get("type")
    type_problem = _type_problem(value, kind)
    if type_problem:
        yield f"{path or '.'}: {type_problem}"
        return
    if "enum" in schema and value not in schema["enum"]:
        yield f"{path}: {value!r} is not one of {schema['enum']}"
    if kind == "array":
        for index, item in enumerate(value):
            yield from _check(item, schema.get("items") or {}, f"{path}[{index}]", patch=patch)
    elif kind == "object" or isinstance(value, dict):
        yield from _check_object(value, schema, path, patch=patch, root=root)


def _type_problem(value: Any, kind: str | None) -> str | None:
    expected = {
        "object": dict,
        "array": list,
        "string": str,
        "boolean": bool,
    }
    if kind in expected and not isinstance(value, expected[kind]):
        return f"must be {kind}, got {type(value).__name__}"
    if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        return f"must be integer, got {type(value).__name__} {value!r}"
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, int | float)):
        return f"must be number, got {type(value).__name__}"
    return None


def _check_object(
    value: dict[str, Any], schema: Mapping[str, Any], path: str, *, patch: bool, root: bool
) -> Iterator[str]:
    properties: Mapping[str, Any] = schema.get("properties") or {}
    additional = schema.get("additionalProperties")
    keeps_unknown = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    embedded = bool(schema.get("x-kubernetes-embedded-resource"))
    if not patch:
        for name in schema.get("required") or ():
            if name not in value:
                yield f"{path}.{name}: required"
    for name, item in value.items():
        where = f"{path}.{name}"
        if root and name == "metadata":
            yield from _check_root_metadata(item, where, patch=patch)
        elif name in properties:
            yield from _check(item, properties[name], where, patch=patch)
        elif isinstance(additional, dict):
            yield from _check(item, additional, where, patch=patch)
        elif (root or embedded) and name in _EMBEDDED:
            continue
        elif not keeps_unknown and additional is not True:
            yield f"{where}: unknown field (the API server would prune it)"


def _check_root_metadata(value: Any, path: str, *, patch: bool) -> Iterator[str]:
    if not isinstance(value, dict):
        yield f"{path}: must be object"
        return
    for name, item in value.items():
        shape = ROOT_METADATA_FIELDS.get(name)
        if shape is None:
            continue  # ObjectMeta has many more fields; the driver does not write them
        if item is None and patch:
            continue
        if shape == "string" and not isinstance(item, str):
            yield f"{path}.{name}: must be string"
        if shape == "map" and not (
            isinstance(item, dict) and all(isinstance(v, str) for v in item.values())
        ):
            yield f"{path}.{name}: must be a map of strings"
        if shape == "list" and not isinstance(item, list):
            yield f"{path}.{name}: must be a list"


def merged(base: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of ``patch`` onto ``base``."""
    if not isinstance(patch, dict):
        return patch
    result = dict(base) if isinstance(base, dict) else {}
    for key, item in patch.items():
        if item is None:
            result.pop(key, None)
        else:
            result[key] = merged(result.get(key), item)
    return result
