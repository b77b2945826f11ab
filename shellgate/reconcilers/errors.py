"""Domain errors that reconcilers raise and the API layer maps to gRPC status codes.

A mutation that raises one of these aborts its compare-and-swap write: nothing is stored and
the client gets the error. The API maps ``InvalidArgument`` to INVALID_ARGUMENT (with one
``BadRequest.FieldViolation`` per violation) and ``FailedPrecondition`` to FAILED_PRECONDITION.
Callers branch on the class, never on the text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field of a request.

    ``field`` is a dotted path into the request or object ("spec.environment",
    "metadata.labels", "provider_name"); ``description`` is the human-readable reason, which
    names the field itself so it reads well on its own.
    """

    field: str
    description: str


class DomainError(Exception):
    """Base class of every refusal a reconciler can raise."""


class InvalidArgument(DomainError):
    """The request itself is malformed or exceeds a limit; retrying it unchanged cannot help."""

    def __init__(self, violations: Iterable[FieldViolation]) -> None:
        self.violations: tuple[FieldViolation, ...] = tuple(violations)
        if not self.violations:
            raise ValueError("InvalidArgument needs at least one violation")
        super().__init__("; ".join(v.description for v in self.violations))

    @classmethod
    def single(cls, field: str, description: str) -> InvalidArgument:
        """Shorthand for the common case of exactly one violation."""
        return cls([FieldViolation(field, description)])


class FailedPrecondition(DomainError):
    """The request is well-formed but the object is not in a state that allows it.

    ``current_state`` names that state (for a sandbox, the ``SandboxPhase`` enum name such as
    "SANDBOX_PHASE_DELETING") so the API can report it without parsing the message.
    """

    def __init__(self, message: str, current_state: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.current_state = current_state
