"""The authenticated caller of one RPC, and where the handlers find it.

The authentication interceptor wraps every method handler so that the handler's coroutine
(or async generator, for streams) runs with ``CURRENT_PRINCIPAL`` set; a context variable
rather than a gRPC metadata lookup because it is set once, after the credentials were
verified, and cannot be forged by a client sending a header.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified caller.

    ``scopes`` is None when scope checks are off (no ``--oidc-scopes-claim``, mTLS, or no
    authentication configured); otherwise the scopes the token granted.
    """

    subject: str
    display_name: str = ""
    provider: str = ""  # "oidc", "mtls" or "none"
    roles: frozenset[str] = field(default_factory=frozenset)
    scopes: frozenset[str] | None = None
    platform_admin: bool = False
    user: bool = False
    """True when the caller holds the user role (workspace members also need it)."""


ANONYMOUS_ADMIN = Principal(
    subject="anonymous", display_name="anonymous", provider="none", platform_admin=True, user=True
)
"""The caller when no authentication is configured: only allowed on loopback listeners (or
with ``--allow-unauthenticated``), where whoever reaches the port owns the gateway."""

NOBODY = Principal(subject="", display_name="unauthenticated", provider="")
"""What a task sees when no interceptor set a caller: no roles, no rights. The safe default,
so that code reached outside an authenticated RPC can never act as an admin by accident."""

CURRENT_PRINCIPAL: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "shellgate_principal", default=NOBODY
)


def current_principal() -> Principal:
    """The caller of the RPC this task serves."""
    return CURRENT_PRINCIPAL.get()
