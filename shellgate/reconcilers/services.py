"""Service endpoints: what a valid ExposeService request is, the row it names, and the change
it makes to an existing one.

An endpoint exposes one port of one sandbox under a routable key: ``<sandbox>--<service>``,
or the sandbox's name alone for its unnamed service (the reference's key, and why ``--`` may
appear in neither part). Both names are DNS labels of at most 28 characters so the key fits
a host name label. ExposeService is create-or-update: a second call for the same key changes
the port, the domain flag and the authorization mode of the row that is there.
"""

from __future__ import annotations

from shellgate.api import openshell_pb2
from shellgate.reconcilers.errors import FieldViolation
from shellgate.reconcilers.policy import MAX_PORT
from shellgate.reconcilers.validation import MAX_SERVICE_NAME_LEN, MAX_SERVICE_SANDBOX_NAME_LEN

ServiceEndpoint = openshell_pb2.ServiceEndpoint
SANDBOX_LABEL = "sandbox"


def _is_dns_label(value: str) -> bool:
    return (
        not value.startswith("-")
        and not value.endswith("-")
        and all((c.islower() and c.isascii()) or c.isdigit() or c == "-" for c in value)
    )


def validate_endpoint_name(
    value: str, field: str, limit: int, *, required: bool
) -> list[FieldViolation]:
    if not value:
        return [FieldViolation(field, f"{field} is required")] if required else []
    if len(value) > limit:
        return [
            FieldViolation(
                field, f"{field} must be at most {limit} characters for sandbox service routing"
            )
        ]
    if "--" in value:
        return [FieldViolation(field, f"{field} must not contain '--'")]
    if not _is_dns_label(value):
        return [FieldViolation(field, f"{field} must be a lowercase DNS label")]
    return []


def validate_target(sandbox: str, service: str) -> list[FieldViolation]:
    """The sandbox and service names of any service RPC."""
    violations = validate_endpoint_name(
        sandbox, "sandbox", MAX_SERVICE_SANDBOX_NAME_LEN, required=True
    )
    violations += validate_endpoint_name(service, "name", MAX_SERVICE_NAME_LEN, required=False)
    return violations


def validate_expose(request: openshell_pb2.ExposeServiceRequest) -> list[FieldViolation]:
    violations = validate_target(request.sandbox, request.name)
    if not 0 < request.target_port <= MAX_PORT:
        violations.append(FieldViolation("target_port", f"target_port must be in 1..={MAX_PORT}"))
    if request.authorization_mode not in openshell_pb2.ServiceAuthorizationMode.values():
        violations.append(
            FieldViolation("authorization_mode", "authorization_mode is not a known mode")
        )
    return violations


def endpoint_key(sandbox: str, service: str) -> str:
    return f"{sandbox}--{service}" if service else sandbox


def new_endpoint(
    request: openshell_pb2.ExposeServiceRequest, *, new_id: str, sandbox_id: str, workspace: str
) -> ServiceEndpoint:
    endpoint = ServiceEndpoint(
        sandbox_id=sandbox_id,
        sandbox=request.sandbox,
        name=request.name,
        target_port=request.target_port,
        domain=request.domain,
        authorization_mode=request.authorization_mode,
    )
    meta = endpoint.metadata
    meta.id = new_id
    meta.name = endpoint_key(request.sandbox, request.name)
    meta.workspace = workspace
    meta.labels[SANDBOX_LABEL] = request.sandbox
    return endpoint


class ExposeChange:
    """ExposeService on an existing row of the same sandbox: the exposure settings change,
    nothing else. The same settings again change nothing (and so write nothing)."""

    def __init__(self, request: openshell_pb2.ExposeServiceRequest) -> None:
        self.request = request

    def __call__(self, stored: ServiceEndpoint) -> ServiceEndpoint:
        stored.target_port = self.request.target_port
        stored.domain = self.request.domain
        stored.authorization_mode = self.request.authorization_mode
        return stored
