"""Who a call runs as, over real gRPC sockets with real TLS: the authentication interceptor,
the client-certificate subject the TLS layer verified, and bearer tokens from a real issuer.

The server here serves one method that answers the ``Principal`` its handler sees, so the
test observes exactly what authorization will be given.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import grpc
import pytest

from shellgate.controller.auth.authenticate import AuthenticateCalls, Authenticator
from shellgate.controller.auth.modes import auth_modes_of
from shellgate.controller.auth.mtls import ClientCertificateAuthenticator
from shellgate.controller.auth.oidc import OidcAuthenticator, OidcSettings
from shellgate.controller.auth.principal import ANONYMOUS_ADMIN, current_principal
from shellgate.controller.auth.tls import CertificateReloader, TlsFiles, server_credentials
from tests.support.oidc_issuer import Issuer
from tests.support.pki import Issued, TestCA

WHOAMI = "/shellgate.test.Identity/WhoAmI"
HEALTH = "/openshell.v1.OpenShell/Health"


async def _whoami(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    caller = current_principal()
    return json.dumps(
        {
            "subject": caller.subject,
            "display_name": caller.display_name,
            "provider": caller.provider,
            "platform_admin": caller.platform_admin,
        }
    ).encode()


async def _health(_request: bytes, _context: grpc.aio.ServicerContext) -> bytes:
    return b"alive"


async def start_server(
    files: TlsFiles, authenticators: Sequence[Authenticator]
) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(interceptors=[AuthenticateCalls(authenticators, anonymous=None)])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "shellgate.test.Identity",
                {"WhoAmI": grpc.unary_unary_rpc_method_handler(_whoami)},
            ),
            grpc.method_handlers_generic_handler(
                "openshell.v1.OpenShell",
                {"Health": grpc.unary_unary_rpc_method_handler(_health)},
            ),
        ]
    )
    port = server.add_secure_port("127.0.0.1:0", server_credentials(CertificateReloader(files)))
    await server.start()
    return server, port


async def call(
    port: int,
    ca: Path,
    client: Issued | None = None,
    token: str | None = None,
    method: str = WHOAMI,
) -> dict[str, object] | str:
    """The decoded answer, or the status code name when the call fails."""
    credentials = grpc.ssl_channel_credentials(
        ca.read_bytes(),
        client.key.read_bytes() if client else None,
        client.cert.read_bytes() if client else None,
    )
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        try:
            answer = await channel.unary_unary(method)(b"", metadata=metadata, timeout=5)
        except grpc.aio.AioRpcError as error:
            return str(error.code().name)
    return json.loads(answer) if method == WHOAMI else answer.decode()


@pytest.fixture
async def mtls_and_oidc(ca: TestCA, issuer: Issuer) -> AsyncIterator[int]:
    """Client certificates required; bearer tokens first, then the certificate's subject."""
    server_cert = ca.server()
    oidc = OidcAuthenticator(OidcSettings(issuer=issuer.url))
    files = TlsFiles(server_cert.cert, server_cert.key, client_ca=ca.cert)
    server, port = await start_server(files, [oidc, ClientCertificateAuthenticator()])
    try:
        yield port
    finally:
        await server.stop(0)
        await oidc.keys.aclose()


async def test_a_verified_client_certificate_names_a_platform_admin(
    ca: TestCA, mtls_and_oidc: int
) -> None:
    alice = ca.client("alice")
    answer = await call(mtls_and_oidc, ca.cert, alice)
    assert answer == {
        "subject": alice.subject,
        "display_name": "alice",
        "provider": "mtls",
        "platform_admin": True,
    }


async def test_a_bearer_token_decides_over_the_certificate(
    ca: TestCA, issuer: Issuer, mtls_and_oidc: int
) -> None:
    alice = ca.client("alice")
    token = issuer.token(sub="bob-id", preferred_username="bob", realm_access={"roles": []})
    answer = await call(mtls_and_oidc, ca.cert, alice, token)
    assert answer == {
        "subject": "bob-id",
        "display_name": "bob",
        "provider": "oidc",
        "platform_admin": False,
    }
    # A bad token is refused outright, never overlooked in favour of the certificate.
    expired = issuer.token(exp=1)
    assert await call(mtls_and_oidc, ca.cert, alice, expired) == "UNAUTHENTICATED"


async def test_client_certificates_are_required_and_must_chain_to_the_client_ca(
    ca: TestCA, tmp_path: Path, mtls_and_oidc: int
) -> None:
    assert await call(mtls_and_oidc, ca.cert) == "UNAVAILABLE"  # the handshake fails
    impostor = TestCA(tmp_path / "other", name="another CA").client("alice")
    assert await call(mtls_and_oidc, ca.cert, impostor) == "UNAVAILABLE"


async def test_with_oidc_only_a_call_without_a_token_is_unauthenticated(
    ca: TestCA, issuer: Issuer
) -> None:
    server_cert = ca.server()
    oidc = OidcAuthenticator(OidcSettings(issuer=issuer.url))
    server, port = await start_server(TlsFiles(server_cert.cert, server_cert.key), [oidc])
    try:
        assert await call(port, ca.cert) == "UNAUTHENTICATED"
        assert await call(port, ca.cert, method=HEALTH) == "alive"  # Health stays public
        # A client certificate is neither asked for nor an identity here.
        assert await call(port, ca.cert, ca.client("alice")) == "UNAUTHENTICATED"
        answer = await call(port, ca.cert, token=issuer.token())
        assert isinstance(answer, dict) and answer["subject"] == "user-1"
    finally:
        await server.stop(0)
        await oidc.keys.aclose()


async def test_gateway_info_names_the_modes_that_are_enforced(issuer: Issuer) -> None:
    """GetGatewayInfo reports what the server was started with: each authenticator by its
    mode, and "none" only when calls without credentials are accepted."""
    oidc = OidcAuthenticator(OidcSettings(issuer=issuer.url))
    try:
        assert auth_modes_of([oidc, ClientCertificateAuthenticator()], None) == ("oidc", "mtls")
        assert auth_modes_of([], ANONYMOUS_ADMIN) == ("none",)
    finally:
        await oidc.keys.aclose()


class _Broken:
    """An authenticator with a bug: it raises something other than ``Unauthenticated``."""

    async def authenticate(self, call: object) -> None:
        raise RuntimeError("bug in an authenticator")


async def test_a_failing_authenticator_answers_unavailable_and_lets_nothing_through(
    ca: TestCA,
) -> None:
    server_cert = ca.server()
    server, port = await start_server(TlsFiles(server_cert.cert, server_cert.key), [_Broken()])
    try:
        assert await call(port, ca.cert, token="anything") == "UNAVAILABLE"
        assert await call(port, ca.cert, method=HEALTH) == "alive"  # public: not authenticated
    finally:
        await server.stop(0)
