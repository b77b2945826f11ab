"""A stand-in authenticator for authorization tests: ``authorization: Bearer <name>`` maps
to a Principal the test defines. It stands in for token verification only (the OIDC and mTLS
authenticators are tested for real elsewhere); everything behind it (the interceptor, the
authorization decision, the store) is the real thing."""

from __future__ import annotations

from collections.abc import Mapping

from shellgate.controller.auth.authenticate import CallCredentials, Unauthenticated
from shellgate.controller.auth.principal import Principal

PREFIX = "Bearer "


class NamedBearer:
    mode = "test-bearer"

    def __init__(self, principals: Mapping[str, Principal]) -> None:
        self.principals = dict(principals)

    async def authenticate(self, call: CallCredentials) -> Principal | None:
        header = call.metadata.get("authorization")
        if header is None:
            return None
        if not header.startswith(PREFIX):
            raise Unauthenticated("not a bearer token")
        principal = self.principals.get(header.removeprefix(PREFIX))
        if principal is None:
            raise Unauthenticated("unknown token")
        return principal


def bearer(name: str) -> tuple[tuple[str, str], ...]:
    """The call metadata that authenticates as ``name``."""
    return (("authorization", f"{PREFIX}{name}"),)
