"""OIDC bearer tokens: ``authorization: Bearer <JWT>`` verified against the issuer's keys.

Verification is PyJWT's, never ours: the signature (RS256 or ES256 only, so neither an
unsigned ``alg: none`` token nor an HMAC token "signed" with the public key as a secret can
pass), the issuer, the audience, expiry and not-before with a small clock-skew allowance.

The issuer's signing keys (its JWKS, found through ``/.well-known/openid-configuration``) are
fetched with aiohttp, never blocking the event loop, and kept for ``jwks_ttl_seconds``. A key
we hold keeps working while a refresh runs or fails, so an unreachable issuer does not lock
out callers whose tokens are signed by keys already fetched. A token signed by a key we do not
hold triggers a refetch (how a key rotation at the issuer is picked up), at most once per
``min_refetch_seconds``, so a stream of tokens with made-up key ids cannot turn the gateway
into a flood of requests at the issuer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt

from shellgate.controller.auth.authenticate import CallCredentials, Unauthenticated
from shellgate.controller.auth.principal import Principal
from shellgate.controller.auth.tls import is_loopback_host
from shellgate.store import ConfigurationError

log = logging.getLogger(__name__)

ALGORITHMS = ("RS256", "ES256")
IGNORED_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})
"""Scopes every OIDC login carries; they grant nothing here."""
MAX_TOKEN_CHARS = 16 * 1024
MAX_DOCUMENT_BYTES = 1024 * 1024
FETCH_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class OidcSettings:
    issuer: str
    audience: str = "openshell-cli"
    roles_claim: str = "realm_access.roles"
    admin_role: str = "openshell-admin"
    user_role: str = "openshell-user"
    scopes_claim: str = ""
    """Empty: no scope checks (``Principal.scopes`` is None)."""
    jwks_ttl_seconds: float = 3600.0
    min_refetch_seconds: float = 10.0
    clock_skew_seconds: float = 30.0

    def __post_init__(self) -> None:
        check_fetch_url(self.issuer, "--oidc-issuer")
        if not self.audience:
            raise ConfigurationError("--oidc-audience must not be empty")
        if not (self.jwks_ttl_seconds > 0 and math.isfinite(self.jwks_ttl_seconds)):
            raise ConfigurationError("--oidc-jwks-ttl must be a positive number of seconds")


def check_fetch_url(url: str, what: str) -> None:
    """Keys fetched over plain HTTP could be replaced by anyone on the path, who could then
    sign tokens: https only, except on loopback (a local issuer, tests)."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and is_loopback_host(parts.hostname or ""):
        return
    raise ConfigurationError(f"{what} must be an https:// URL (http:// only on loopback)")


class IssuerKeys:
    """The issuer's signing keys by key id, refreshed as the module docstring describes."""

    def __init__(self, settings: OidcSettings, *, clock: Any = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -math.inf
        self._refetched_at = {"unknown key": -math.inf, "no keys": -math.inf}
        self._background_fetch_at = -math.inf
        self._inflight: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self.fetches = 0
        """JWKS documents fetched successfully (how tests see caching and rate limits)."""

    async def key(self, kid: str) -> jwt.PyJWK:
        now = self._clock()
        known = self._keys.get(kid)
        if known is not None:
            if now - self._fetched_at >= self._settings.jwks_ttl_seconds:
                self._refresh_in_background(now)
            return known
        # Holding no keys yet (never fetched, or the issuer was down) and meeting a key we
        # do not hold are rate-limited separately, so the first fetch does not delay the
        # pickup of a rotation that follows it.
        window = "unknown key" if self._keys else "no keys"
        if now - self._refetched_at[window] >= self._settings.min_refetch_seconds:
            self._refetched_at[window] = now
            await asyncio.shield(self._refresh())
        elif self._inflight is not None:
            await asyncio.shield(self._inflight)
        found = self._keys.get(kid)
        if found is None:
            raise Unauthenticated("token signed by a key the issuer does not publish")
        return found

    def prefetch(self) -> None:
        """Fetch the keys now, in the background, so the first call does not wait."""
        self._refresh_in_background(self._clock())

    async def aclose(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._inflight
        if self._session is not None:
            await self._session.close()

    def _refresh_in_background(self, now: float) -> None:
        if now - self._background_fetch_at >= self._settings.min_refetch_seconds:
            self._background_fetch_at = now
            self._refresh()

    def _refresh(self) -> asyncio.Task[None]:
        """One fetch at a time; callers that arrive while it runs share it."""
        if self._inflight is None or self._inflight.done():
            self._inflight = asyncio.create_task(self._fetch_logged(), name="oidc-jwks-fetch")
        return self._inflight

    async def _fetch_logged(self) -> None:
        try:
            keys = await asyncio.wait_for(self._fetch(), FETCH_TIMEOUT_SECONDS * 2)
        except (TimeoutError, aiohttp.ClientError, ValueError, OSError) as exc:
            state = f"keeping {len(self._keys)} cached keys" if self._keys else "no keys yet"
            log.warning("cannot fetch the OIDC issuer's keys (%s); %s", _reason(exc), state)
            return
        self._keys = keys
        self._fetched_at = self._clock()
        self.fetches += 1
        log.info("fetched %d signing keys from the OIDC issuer", len(keys))

    async def _fetch(self) -> dict[str, jwt.PyJWK]:
        issuer = self._settings.issuer.rstrip("/")
        discovery = await self._get_json(issuer + "/.well-known/openid-configuration")
        if str(discovery.get("issuer", "")).rstrip("/") != issuer:
            raise ValueError("the discovery document names another issuer")
        jwks_uri = discovery.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise ValueError("the discovery document has no jwks_uri")
        try:
            check_fetch_url(jwks_uri, "jwks_uri")
        except ConfigurationError as exc:
            raise ValueError(str(exc)) from None
        return signing_keys(await self._get_json(jwks_uri))

    async def _get_json(self, url: str) -> Mapping[str, Any]:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT_SECONDS)
            self._session = aiohttp.ClientSession(timeout=timeout)
        async with self._session.get(url, allow_redirects=False) as response:
            response.raise_for_status()
            body = await response.content.read(MAX_DOCUMENT_BYTES + 1)
        if len(body) > MAX_DOCUMENT_BYTES:
            raise ValueError(f"{url} answered more than {MAX_DOCUMENT_BYTES} bytes")
        document = json.loads(body)
        if not isinstance(document, dict):
            raise ValueError(f"{url} did not answer a JSON object")
        return document


def signing_keys(jwks: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
    """The usable signature keys of a JWKS by key id; keys we cannot use are left out (an
    issuer may publish encryption keys or algorithms we do not accept)."""
    keys: dict[str, jwt.PyJWK] = {}
    entries = jwks.get("keys")
    if not isinstance(entries, list):
        raise ValueError("the JWKS has no keys list")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("kid"), str):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue
        if key.algorithm_name in ALGORITHMS:
            keys[entry["kid"]] = key
    return keys


class OidcAuthenticator:
    """An ``Authenticator`` for ``authorization: Bearer <JWT>``."""

    mode = "oidc"
    """How GetGatewayInfo names this way of authenticating."""

    def __init__(self, settings: OidcSettings, keys: IssuerKeys | None = None) -> None:
        self.settings = settings
        self.keys = keys or IssuerKeys(settings)

    async def authenticate(self, call: CallCredentials) -> Principal | None:
        token = bearer_token(call.metadata)
        if token is None:
            return None
        claims = await self.verify(token)
        return principal_from_claims(claims, self.settings)

    async def verify(self, token: str) -> dict[str, Any]:
        """The token's claims, or ``Unauthenticated`` saying (briefly) why not."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("malformed bearer token") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in ALGORITHMS:
            raise Unauthenticated("token algorithm not accepted (RS256 or ES256 only)")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("token has no key id")
        key = await self.keys.key(kid)
        if key.algorithm_name != algorithm:
            raise Unauthenticated("token algorithm does not match its key")
        issuer = self.settings.issuer
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[algorithm],
                audience=self.settings.audience,
                issuer=[issuer, issuer.rstrip("/")],
                leeway=self.settings.clock_skew_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("token not valid yet") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("token from another issuer") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("token signature does not verify") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token lacks the {exc.claim} claim") from None
        except jwt.InvalidTokenError:
            raise Unauthenticated("invalid bearer token") from None
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise Unauthenticated("token has no subject")
        return claims


def bearer_token(metadata: Mapping[str, str]) -> str | None:
    """The token of an ``authorization: Bearer`` header; None without such a header."""
    header = metadata.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    if not token:
        raise Unauthenticated("empty bearer token")
    if len(token) > MAX_TOKEN_CHARS:
        raise Unauthenticated(f"bearer token longer than {MAX_TOKEN_CHARS} characters")
    return token


def principal_from_claims(claims: Mapping[str, Any], settings: OidcSettings) -> Principal:
    roles = frozenset(claim_strings(claims, settings.roles_claim))
    admin = settings.admin_role in roles
    scopes = None
    if settings.scopes_claim:
        scopes = frozenset(claim_strings(claims, settings.scopes_claim)) - IGNORED_SCOPES
    return Principal(
        subject=claims["sub"],
        display_name=display_name(claims),
        provider="oidc",
        roles=roles,
        scopes=scopes,
        platform_admin=admin,
        user=admin or settings.user_role in roles,
    )


def claim_strings(claims: Mapping[str, Any], path: str) -> list[str]:
    """The strings at a dot path (``realm_access.roles``): a list of strings, or one string
    of space-separated words (how the ``scope`` claim is written). Absent: none."""
    value: Any = claims
    for step in path.split("."):
        if not isinstance(value, Mapping):
            return []
        value = value.get(step)
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def display_name(claims: Mapping[str, Any]) -> str:
    for name in ("name", "preferred_username", "email", "sub"):
        value = claims.get(name)
        if isinstance(value, str) and value:
            return value
    return ""


def _reason(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:200]
