"""OIDC bearer tokens on a real ``shellgate serve`` process, sent by the official SDK, with
tokens from a throwaway issuer the test runs."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.auth.sdk import sdk_codes
from tests.support.oidc_issuer import (
    Issuer,
    SigningKey,
    hmac_with_public_key,
    tampered,
    unsigned_token,
)
from tests.support.pki import TestCA
from tests.support.processes import GatewayProcess, gateways

pytestmark = pytest.mark.slow


async def test_bearer_tokens_good_and_bad_over_tls(
    tmp_path: Path, ca: TestCA, issuer: Issuer
) -> None:
    server = ca.server()
    gateway = GatewayProcess(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "state")
    gateway.extra_args = [
        "--listen", f"0.0.0.0:{gateway.grpc_port}",  # allowed: OIDC is configured
        "--tls-cert", str(server.cert),
        "--tls-key", str(server.key),
        "--oidc-issuer", issuer.url,
    ]  # fmt: skip
    now = int(time.time())
    key = issuer.keys[0]
    tokens = {
        "good": issuer.token(),
        "expired": issuer.token(exp=now - 300),
        "wrong audience": issuer.token(aud="another-client"),
        "wrong issuer": issuer.token(iss="http://127.0.0.1:9/realms/other"),
        "unknown key id": issuer.token(SigningKey.new("ES256")),
        "alg none": unsigned_token(issuer.claims(), key.kid),
        "HS256 with the public key": hmac_with_public_key(issuer.claims(), key),
        "tampered payload": tampered(issuer.token(realm_access={"roles": []}), sub="root"),
    }
    async with gateways([gateway]):
        codes = await sdk_codes(
            gateway.address,
            [{"ca": ca.cert, "token": token} for token in tokens.values()] + [{"ca": ca.cert}],
        )
    answers = dict(zip([*tokens, "no token"], codes, strict=True))
    assert answers == {
        "good": "OK",
        "expired": "UNAUTHENTICATED",
        "wrong audience": "UNAUTHENTICATED",
        "wrong issuer": "UNAUTHENTICATED",
        "unknown key id": "UNAUTHENTICATED",
        "alg none": "UNAUTHENTICATED",
        "HS256 with the public key": "UNAUTHENTICATED",
        "tampered payload": "UNAUTHENTICATED",
        "no token": "UNAUTHENTICATED",
    }
    assert "authentication: oidc" in gateway.log_text()


async def test_key_rotation_and_an_issuer_outage(tmp_path: Path, issuer: Issuer) -> None:
    gateway = GatewayProcess(
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        tmp_path / "state",
        extra_args=["--oidc-issuer", issuer.url, "--oidc-jwks-ttl", "1"],
    )
    async with gateways([gateway]):
        old = issuer.keys[0]
        assert await sdk_codes(gateway.address, [{"token": issuer.token(old)}]) == ["OK"]

        new = SigningKey.new()
        issuer.keys = [new]  # the issuer rotates and withdraws the old key
        codes = await sdk_codes(
            gateway.address, [{"token": issuer.token(new)}, {"token": issuer.token(old)}]
        )
        assert codes == ["OK", "UNAUTHENTICATED"]

        await issuer.stop()
        await asyncio.sleep(1.5)  # past the one-second TTL, with the issuer unreachable
        assert await sdk_codes(gateway.address, [{"token": issuer.token(new)}]) == ["OK"]
