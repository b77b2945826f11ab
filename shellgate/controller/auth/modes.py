"""How callers of this gateway authenticate, as GetGatewayInfo reports it.

Derived from what the server was started with, so the answer is what is enforced: each
authenticator names its mode with a ``mode`` attribute ("oidc", "mtls"; its class name when
it has none), and "none" is listed when calls without credentials are accepted.
"""

from __future__ import annotations

from collections.abc import Sequence

from shellgate.controller.auth.authenticate import Authenticator
from shellgate.controller.auth.principal import Principal

UNAUTHENTICATED_MODE = "none"


def auth_modes_of(
    authenticators: Sequence[Authenticator], anonymous: Principal | None
) -> tuple[str, ...]:
    modes = [str(getattr(a, "mode", type(a).__name__.lower())) for a in authenticators]
    if anonymous is not None:
        modes.append(UNAUTHENTICATED_MODE)
    return tuple(dict.fromkeys(modes))
