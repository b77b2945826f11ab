"""Client-certificate identity (``--enable-mtls-auth``), for single-user gateways.

The TLS layer has already verified the certificate against ``--tls-client-ca`` before any
RPC runs; this authenticator only names the caller after the certificate's subject. Whoever
holds a certificate from that CA is a platform admin, the same trust the reference gateway
gives its mTLS mode, so the CA should sign certificates for administrators only.
"""

from __future__ import annotations

from shellgate.controller.auth.authenticate import CallCredentials
from shellgate.controller.auth.principal import Principal


class ClientCertificateAuthenticator:
    """A verified client certificate makes its subject a platform admin; no certificate is
    "no credentials of this kind" (another authenticator, or the refusal, decides)."""

    mode = "mtls"
    """How GetGatewayInfo names this way of authenticating."""

    async def authenticate(self, call: CallCredentials) -> Principal | None:
        subject = call.peer_certificate_subject
        if not subject:
            return None
        return Principal(
            subject=subject,
            display_name=common_name(subject) or subject,
            provider="mtls",
            platform_admin=True,
            user=True,
            scopes=None,
        )


def common_name(subject: str) -> str:
    """The CN of an RFC 4514 subject such as ``CN=alice,O=acme`` ("" when it has none)."""
    for part in subject.split(","):
        name, _, value = part.strip().partition("=")
        if name.upper() == "CN":
            return value
    return ""
