"""The one place where errors become gRPC statuses.

Store errors, domain errors and driver errors are typed; this module maps each class to a
status code and attaches ``google.rpc`` details the SDK's ``GatewayError`` decodes:
ABORTED carries ``ErrorInfo(reason=RESOURCE_VERSION_CONFLICT)`` with the current version and
a ``RetryInfo``; INVALID_ARGUMENT carries ``BadRequest`` field violations; UNAVAILABLE carries
a ``RetryInfo``. Nothing here inspects message text.

Statuses travel in trailers, which clients bound to 8-16 KiB: a message or a violation list
that quotes a caller's input whole would turn the real answer into RESOURCE_EXHAUSTED on the
client. So every message is cut to ``MAX_MESSAGE`` bytes, every description to
``MAX_DESCRIPTION`` bytes and a BadRequest lists at most ``MAX_VIOLATIONS``, whatever the
handler raised. Counted in bytes, the worst answer (a message of non-ASCII characters sent
percent-encoded, three characters a byte, plus the details in base64) stays under 8 KiB.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from shellgate.controller.auth.authorize import AccessDenied
from shellgate.controller.drivers.base import DriverConflict, DriverError
from shellgate.reconcilers.errors import FailedPrecondition, FieldViolation, InvalidArgument
from shellgate.store import (
    Conflict,
    InvalidPageToken,
    InvalidSelector,
    InvalidValue,
    NotFound,
    StoreUnavailable,
    UniqueViolation,
)
from shellgate.store.errors import quoted
from shellgate.store.repositories import (
    ProfileInUse,
    ProfileMissing,
    ProviderInUse,
    ProviderMissing,
    TemplateInUse,
    TemplateMissing,
    WorkspaceMissing,
    WorkspaceNotEmpty,
    WorkspaceTerminating,
)
from shellgate.store.secrets import SecretError

log = logging.getLogger(__name__)

DOMAIN = "shellgate.openshell.ai"
CONFLICT_REASON = "RESOURCE_VERSION_CONFLICT"
CONFLICT_RETRY_DELAY = duration_pb2.Duration(nanos=50_000_000)
UNAVAILABLE_RETRY_DELAY = duration_pb2.Duration(seconds=1)
MAX_MESSAGE = 1024
MAX_DESCRIPTION = 128
MAX_VIOLATIONS = 8


class RequestError(Exception):
    """A handler's own refusal with an explicit code (NOT_FOUND for a missing name, ...)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def not_found(kind: str, name: str) -> RequestError:
    return RequestError(grpc.StatusCode.NOT_FOUND, f"{kind} {quoted(name)} not found")


def status_for(error: BaseException, operation: str) -> grpc.Status:
    """The rich gRPC status for ``error`` raised while doing ``operation``."""
    return rpc_status.to_status(_rich_status(error, operation))


def _rich_status(error: BaseException, operation: str) -> status_pb2.Status:
    match error:
        case RequestError():
            return _status(error.code.value[0], error.message)
        case AccessDenied():
            return _status(error.code.value[0], error.reason)
        case WorkspaceMissing():
            return _status(code_pb2.NOT_FOUND, str(error))
        case WorkspaceTerminating():
            return _failed_precondition(FailedPrecondition(str(error), "WORKSPACE_TERMINATING"))
        case WorkspaceNotEmpty():
            return _failed_precondition(FailedPrecondition(str(error), "WORKSPACE_NOT_EMPTY"))
        case InvalidArgument():
            return _invalid(error.violations)
        case InvalidSelector() | InvalidPageToken():
            field = "label_selector" if isinstance(error, InvalidSelector) else "page_token"
            return _invalid((FieldViolation(field, str(error)),))
        case InvalidValue():
            return _invalid((FieldViolation("request", str(error)),))
        case FailedPrecondition():
            return _failed_precondition(error)
        case ProviderMissing():
            return _failed_precondition(FailedPrecondition(str(error), "PROVIDER_MISSING"))
        case ProviderInUse():
            return _failed_precondition(FailedPrecondition(str(error), "PROVIDER_IN_USE"))
        case ProfileMissing():
            return _failed_precondition(FailedPrecondition(str(error), "PROFILE_MISSING"))
        case ProfileInUse():
            return _failed_precondition(FailedPrecondition(str(error), "PROFILE_IN_USE"))
        case TemplateMissing():
            return _failed_precondition(FailedPrecondition(str(error), "TEMPLATE_MISSING"))
        case TemplateInUse():
            return _failed_precondition(FailedPrecondition(str(error), "TEMPLATE_IN_USE"))
        case SecretError():
            log.error("%s: %s", operation, error)  # names the key id and row, never a value
            return _failed_precondition(
                FailedPrecondition(
                    "the stored credentials cannot be opened with this gateway's keys "
                    "(--encryption-key-file)",
                    "CREDENTIALS_SEALED_UNDER_UNKNOWN_KEY",
                )
            )
        case NotFound():
            return _status(code_pb2.NOT_FOUND, f"{error.object_type} not found")
        case Conflict():
            return _conflict(error, operation)
        case UniqueViolation():
            return _status(code_pb2.ALREADY_EXISTS, f"{operation} failed: the name is taken")
        case StoreUnavailable():
            return _unavailable(f"{operation} failed: the database is unavailable")
        case DriverConflict():
            return _status(code_pb2.ALREADY_EXISTS, f"{operation} failed: {error}")
        case DriverError():
            return _unavailable(f"{operation} failed: compute driver: {error}")
    log.exception("%s failed unexpectedly", operation, exc_info=error)
    return _status(code_pb2.INTERNAL, f"{operation} failed: internal error")


def _status(code: int, message: str, *details: any_pb2.Any) -> status_pb2.Status:
    return status_pb2.Status(code=code, message=_cut(message, MAX_MESSAGE), details=list(details))


def _unavailable(message: str) -> status_pb2.Status:
    """UNAVAILABLE with a retry hint: the client may call again unchanged."""
    return _status(code_pb2.UNAVAILABLE, message, _retry(UNAVAILABLE_RETRY_DELAY))


def _cut(text: str, limit: int) -> str:
    """At most ``limit`` bytes of UTF-8: a limit in characters lets four-byte characters
    through four times over, and the message travels percent-encoded, three bytes a byte."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    kept = encoded[: limit - 24].decode(errors="ignore")  # never half a character
    return f"{kept}... ({len(text)} chars)"


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _retry(delay: duration_pb2.Duration) -> any_pb2.Any:
    return _pack(error_details_pb2.RetryInfo(retry_delay=delay))


def _invalid(violations: tuple[FieldViolation, ...]) -> status_pb2.Status:
    shown = [
        FieldViolation(_cut(v.field, MAX_DESCRIPTION), _cut(v.description, MAX_DESCRIPTION))
        for v in violations[:MAX_VIOLATIONS]
    ]
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in shown
        ]
    )
    message = "; ".join(v.description for v in shown)
    if len(violations) > MAX_VIOLATIONS:
        message += f"; and {len(violations) - MAX_VIOLATIONS} more"
    return _status(code_pb2.INVALID_ARGUMENT, message, _pack(bad_request))


def _failed_precondition(error: FailedPrecondition) -> status_pb2.Status:
    info = error_details_pb2.ErrorInfo(
        reason="FAILED_PRECONDITION",
        domain=DOMAIN,
        metadata={"current_state": error.current_state} if error.current_state else {},
    )
    return _status(code_pb2.FAILED_PRECONDITION, error.message, _pack(info))


def _conflict(error: Conflict, operation: str) -> status_pb2.Status:
    current = error.current_resource_version
    shown = "unknown" if current is None else str(current)
    info = error_details_pb2.ErrorInfo(
        reason=CONFLICT_REASON,
        domain=DOMAIN,
        metadata={"current_resource_version": shown},
    )
    message = (
        f"{operation} failed due to concurrent modification (current resource_version: {shown})"
    )
    return _status(code_pb2.ABORTED, message, _pack(info), _retry(CONFLICT_RETRY_DELAY))
