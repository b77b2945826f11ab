"""Sandbox workload templates: what a valid one is, and how a sandbox spec merges over one.

A template is a named, reusable workload (image, environment, CPU, memory, GPU, driver
configuration). ``CreateSandbox`` with ``workload_template`` starts from it and lays the
request's own spec over it: whatever the request sets wins, field by field (for maps and
the resource and driver Structs, key by key), and what it leaves unset comes from the
template. The sandbox records which template, and which version of its row, it was built
from, so a later reader can tell what it started from even after the template is gone.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from shellgate.api import openshell_pb2
from shellgate.reconcilers.errors import FieldViolation
from shellgate.reconcilers.validation import (
    MAX_TEMPLATE_STRING_LEN,
    MAX_TEMPLATE_STRUCT_SIZE,
    validate_annotations,
    validate_encoded_size,
    validate_environment,
    validate_labels,
    validate_max_len,
    validate_object_name,
)

SandboxSpec = openshell_pb2.SandboxSpec
WorkloadTemplate = openshell_pb2.SandboxWorkloadTemplate

MAX_TEMPLATE_SIZE = 256 * 1024
"""A whole template, encoded: it is copied into every sandbox made from it."""
RESOURCE_FIELDS = ("cpu", "memory")


def validate_template(template: WorkloadTemplate) -> list[FieldViolation]:
    """A template about to be stored: its name, labels, annotations and workload, by the same
    limits a sandbox spec has (it ends up in one)."""
    meta = template.metadata
    violations = validate_object_name(meta.name, "template.metadata.name")
    violations += validate_labels(meta.labels, "template.metadata.labels")
    violations += validate_annotations(meta.annotations, "template.metadata.annotations")
    if not template.spec.HasField("workload"):
        violations.append(
            FieldViolation("template.spec.workload", "template.spec.workload is required")
        )
    workload = template.spec.workload
    field = "template.spec.workload"
    violations += validate_max_len(workload.image, f"{field}.image", MAX_TEMPLATE_STRING_LEN)
    violations += validate_environment(workload.environment, f"{field}.environment")
    for attr in RESOURCE_FIELDS:
        value = getattr(workload.resources, attr)
        violations += validate_max_len(value, f"{field}.resources.{attr}", MAX_TEMPLATE_STRING_LEN)
    if template.spec.HasField("driver_config"):
        size = template.spec.driver_config.ByteSize()
        violations += validate_encoded_size(
            size, "template.spec.driver_config", MAX_TEMPLATE_STRUCT_SIZE
        )
    return violations or validate_encoded_size(template.ByteSize(), "template", MAX_TEMPLATE_SIZE)


def template_for_create(
    incoming: WorkloadTemplate, *, new_id: str, workspace: str
) -> WorkloadTemplate:
    """The row to insert: the client's template with a fresh id, its workspace, and none of
    the fields the store owns (version, times)."""
    candidate = WorkloadTemplate()
    candidate.CopyFrom(incoming)
    meta = candidate.metadata
    meta.id = new_id
    meta.workspace = workspace
    meta.resource_version = 0
    meta.ClearField("created_time")
    meta.ClearField("deletion_time")
    return candidate


def _resources_from(template: WorkloadTemplate) -> dict[str, Any]:
    """The template's CPU and memory as a Kubernetes ``ResourceRequirements`` map (requests
    and limits alike), the shape ``spec.template.resources`` has."""
    amounts = {
        attr: getattr(template.spec.workload.resources, attr)
        for attr in RESOURCE_FIELDS
        if getattr(template.spec.workload.resources, attr)
    }
    return {"requests": dict(amounts), "limits": dict(amounts)} if amounts else {}


def _merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` laid on ``base``: nested maps merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _struct(values: dict[str, Any]) -> struct_pb2.Struct:
    made = struct_pb2.Struct()
    made.update(values)
    return made


def _as_dict(spec_struct: struct_pb2.Struct) -> dict[str, Any]:
    return json_format.MessageToDict(spec_struct)


def merge_over_template(spec: SandboxSpec, template: WorkloadTemplate) -> SandboxSpec:
    """The spec a sandbox created from ``template`` gets: ``spec`` laid over the template."""
    merged = SandboxSpec()
    merged.CopyFrom(spec)
    workload = template.spec.workload
    if not merged.template.image and workload.image:
        merged.template.image = workload.image
    environment = dict(workload.environment)
    environment.update(merged.environment)
    merged.environment.clear()
    merged.environment.update(environment)
    resources = _merged(_resources_from(template), _as_dict(spec.template.resources))
    if resources:
        merged.template.resources.CopyFrom(_struct(resources))
    driver_config = _merged(
        _as_dict(template.spec.driver_config), _as_dict(spec.template.driver_config)
    )
    if driver_config:
        merged.template.driver_config.CopyFrom(_struct(driver_config))
    gpu = workload.resources
    if gpu.HasField("gpu") and not merged.resource_requirements.HasField("gpu"):
        merged.resource_requirements.gpu.CopyFrom(gpu.gpu)
    return merged


def record_provenance(sandbox: openshell_pb2.Sandbox, template: WorkloadTemplate) -> None:
    """Which template, at which version of its row, the sandbox was built from."""
    provenance = sandbox.created_from_workload_template
    provenance.name = template.metadata.name
    provenance.resource_version = str(template.metadata.resource_version)
