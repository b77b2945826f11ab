"""What the security options add up to: the listener's TLS, the authenticators, who a call
without credentials is, and the warnings an operator must see.

Secure by default: with no authentication configured (neither ``--oidc-issuer`` nor
``--enable-mtls-auth``) every caller is a platform admin, which is only acceptable when the
only callers are processes on this machine. So such a gateway serves only on a loopback
address, and refuses to start on any other unless ``--allow-unauthenticated`` says the
operator knows (a network policy or a proxy in front does the authentication); then the
warning is logged at start and shown in ``/readyz``'s body, where monitoring sees it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from shellgate.controller.app.options import SecurityOptions, split_address
from shellgate.controller.auth.authenticate import Authenticator
from shellgate.controller.auth.mtls import ClientCertificateAuthenticator
from shellgate.controller.auth.oidc import IssuerKeys, OidcAuthenticator
from shellgate.controller.auth.principal import ANONYMOUS_ADMIN, Principal
from shellgate.controller.auth.tls import CertificateReloader, TlsFiles, is_loopback_host
from shellgate.store import ConfigurationError

log = logging.getLogger("shellgate.security")


@dataclass
class Security:
    authenticators: list[Authenticator] = field(default_factory=list)
    anonymous: Principal | None = ANONYMOUS_ADMIN
    tls: CertificateReloader | None = None
    warnings: list[str] = field(default_factory=list)
    """Shown in ``/readyz``: the gateway is serving in a way an operator must know about."""
    issuer_keys: IssuerKeys | None = None
    modes: list[str] = field(default_factory=list)
    """How callers authenticate ("oidc", "mtls"), for the start-up log line."""

    async def aclose(self) -> None:
        if self.issuer_keys is not None:
            await self.issuer_keys.aclose()


def configure_security(options: SecurityOptions, listen: str) -> Security:
    """The security of a gateway listening on ``listen``; ConfigurationError when that
    would serve unauthenticated calls off loopback without ``--allow-unauthenticated``."""
    security = Security()
    if options.tls_cert:
        client_ca = Path(options.tls_client_ca) if options.tls_client_ca else None
        security.tls = CertificateReloader(
            TlsFiles(Path(options.tls_cert), Path(options.tls_key), client_ca)
        )
    if options.oidc is not None:
        oidc = OidcAuthenticator(options.oidc)
        security.authenticators.append(oidc)
        security.modes.append("oidc")
        security.issuer_keys = oidc.keys
    if options.enable_mtls_auth:
        security.authenticators.append(ClientCertificateAuthenticator())
        security.modes.append("mtls")
    host, _port = split_address(listen, "--listen")
    loopback = is_loopback_host(host)
    if security.authenticators:
        security.anonymous = None  # no credentials: UNAUTHENTICATED
        if options.oidc is not None and security.tls is None and not loopback:
            log.warning(
                "bearer tokens reach %s in cleartext: serve TLS (--tls-cert) unless a proxy "
                "in front terminates it",
                listen,
            )
        return security
    if loopback:
        log.warning(
            "no authentication configured: every process on this machine that can reach %s "
            "is a platform admin",
            listen,
        )
        return security
    if not options.allow_unauthenticated:
        raise ConfigurationError(
            f"--listen {listen} is not a loopback address and no authentication is configured "
            "(anyone who reaches the port would own the gateway): configure --oidc-issuer, or "
            "--tls-client-ca with --enable-mtls-auth, or pass --allow-unauthenticated"
        )
    # /readyz is unauthenticated and names no hosts: the address goes to the log only.
    warning = (
        "serving gRPC without authentication off loopback (--allow-unauthenticated): anyone "
        "who reaches the port is a platform admin"
    )
    log.warning("%s: %s", warning, listen)
    security.warnings.append(warning)
    return security
