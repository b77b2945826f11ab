"""A throwaway OIDC issuer: an aiohttp server on a free loopback port that serves
``/.well-known/openid-configuration`` and a JWKS, and mints tokens with keys the test made.

The test controls it completely: which keys are published (rotation), whether it answers at
all (``stop``/``start`` on the same port), and it counts the requests it served. It also has a
token endpoint for the OAuth client-credentials grant (a service account), for the clients
the test registers in ``clients``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.support.processes import free_port

AUDIENCE = "openshell-cli"


@dataclass
class SigningKey:
    kid: str
    algorithm: str  # RS256 or ES256
    private: Any

    @classmethod
    def new(cls, algorithm: str = "RS256", kid: str | None = None) -> SigningKey:
        private: Any
        if algorithm == "RS256":
            private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        else:
            private = ec.generate_private_key(ec.SECP256R1())
        return cls(kid or f"key-{uuid.uuid4().hex[:8]}", algorithm, private)

    def jwk(self) -> dict[str, Any]:
        algorithm = jwt.get_algorithm_by_name(self.algorithm)
        entry: dict[str, Any] = json.loads(algorithm.to_jwk(self.private.public_key()))
        return {**entry, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def public_pem(self) -> bytes:
        return bytes(
            self.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )


@dataclass(frozen=True)
class ServiceAccount:
    """A confidential client of the issuer and what its tokens say."""

    secret: str
    subject: str
    roles: tuple[str, ...] = ("openshell-user",)


@dataclass
class Issuer:
    port: int = field(default_factory=free_port)
    keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.new()])
    requests: dict[str, int] = field(default_factory=dict)
    clients: dict[str, ServiceAccount] = field(default_factory=dict)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/realms/test"

    @property
    def jwks_fetches(self) -> int:
        return self.requests.get("jwks", 0)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/realms/test/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/realms/test/certs", self._jwks)
        app.router.add_post("/realms/test/token", self._token)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _discovery(self, _request: web.Request) -> web.Response:
        self._count("discovery")
        return web.json_response(
            {
                "issuer": self.url,
                "jwks_uri": f"{self.url}/certs",
                "token_endpoint": f"{self.url}/token",
            }
        )

    async def _jwks(self, _request: web.Request) -> web.Response:
        self._count("jwks")
        return web.json_response({"keys": [key.jwk() for key in self.keys]})

    async def _token(self, request: web.Request) -> web.Response:
        """The client-credentials grant: a registered client with its secret gets a token
        for its service account, with the scopes it asked for."""
        self._count("token")
        form = await request.post()
        client = self.clients.get(str(form.get("client_id", "")))
        if form.get("grant_type") != "client_credentials" or client is None:
            return web.json_response({"error": "unauthorized_client"}, status=400)
        if not hmac.compare_digest(str(form.get("client_secret", "")), client.secret):
            return web.json_response({"error": "invalid_client"}, status=401)
        token = self.token(
            sub=client.subject,
            preferred_username=f"service-account-{form['client_id']}",
            azp=str(form["client_id"]),
            realm_access={"roles": list(client.roles)},
            scope=str(form.get("scope", "")),
        )
        return web.json_response({"access_token": token, "expires_in": 300, "token_type": "Bearer"})

    def _count(self, what: str) -> None:
        self.requests[what] = self.requests.get(what, 0) + 1

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "aud": AUDIENCE,
            "sub": "user-1",
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "preferred_username": "alice",
            "realm_access": {"roles": ["openshell-admin", "openshell-user"]},
            "scope": "openid profile email sandbox:read",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, key: SigningKey | None = None, *, kid: str | None = None, **claims: Any) -> str:
        """A token signed by ``key`` (the first published key by default)."""
        key = key or self.keys[0]
        headers = {"kid": kid or key.kid}
        return jwt.encode(self.claims(**claims), key.private, key.algorithm, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(claims: dict[str, Any], kid: str) -> str:
    """``alg: none``: no signature at all."""
    header = {"alg": "none", "typ": "JWT", "kid": kid}
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}."


def hmac_with_public_key(claims: dict[str, Any], key: SigningKey) -> str:
    """HS256 with the issuer's *public* key as the shared secret: the classic key-confusion
    forgery (anyone can make one, since the key is public). Built by hand because PyJWT
    refuses to make it."""
    header = {"alg": "HS256", "typ": "JWT", "kid": key.kid}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    signature = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def tampered(token: str, **changes: Any) -> str:
    """The same header and signature over a payload with ``changes`` applied."""
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
