"""Bearer-token verification against a real (throwaway) OIDC issuer over HTTP.

Each rejected token is one an attacker or a broken client could send; each must be refused
with UNAUTHENTICATED (``Unauthenticated`` here), and a valid one must map its claims to the
right Principal. The key cache is driven with a test clock so TTL and rate limits are exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from shellgate.controller.auth.authenticate import CallCredentials, Unauthenticated
from shellgate.controller.auth.oidc import IssuerKeys, OidcAuthenticator, OidcSettings
from shellgate.controller.auth.principal import Principal
from shellgate.store import ConfigurationError
from tests.support.oidc_issuer import (
    Issuer,
    SigningKey,
    hmac_with_public_key,
    tampered,
    unsigned_token,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_authenticator(
    issuer: Issuer, clock: Clock
) -> AsyncIterator[Callable[..., OidcAuthenticator]]:
    made: list[OidcAuthenticator] = []

    def make(**overrides: Any) -> OidcAuthenticator:
        settings = OidcSettings(issuer=issuer.url, **overrides)
        authenticator = OidcAuthenticator(settings, IssuerKeys(settings, clock=clock))
        made.append(authenticator)
        return authenticator

    yield make
    for authenticator in made:
        await authenticator.keys.aclose()


def bearer(token: str) -> CallCredentials:
    return CallCredentials(metadata={"authorization": f"Bearer {token}"})


async def principal(authenticator: OidcAuthenticator, token: str) -> Principal:
    found = await authenticator.authenticate(bearer(token))
    assert found is not None
    return found


async def test_a_valid_token_names_the_caller_with_its_roles(
    issuer: Issuer, make_authenticator: Callable[..., OidcAuthenticator]
) -> None:
    caller = await principal(make_authenticator(), issuer.token())
    assert caller.subject == "user-1"
    assert caller.display_name == "alice"
    assert caller.provider == "oidc"
    assert caller.roles == {"openshell-admin", "openshell-user"}
    assert caller.platform_admin and caller.user
    assert caller.scopes is None  # no --oidc-scopes-claim: scope checks off


@pytest.mark.parametrize(
    ("roles", "admin", "user"),
    [
        (["openshell-user"], False, True),
        (["openshell-admin"], True, True),  # an admin is a user too
        (["somebody-else"], False, False),
        ([], False, False),
    ],
)
async def test_roles_decide_admin_and_user(
    issuer: Issuer,
    make_authenticator: Callable[..., OidcAuthenticator],
    roles: list[str],
    admin: bool,
    user: bool,
) -> None:
    token = issuer.token(realm_access={"roles": roles})
    caller = await principal(make_authenticator(), token)
    assert (caller.platform_admin, caller.user, caller.roles) == (admin, user, frozenset(roles))


async def test_role_names_and_claim_path_are_configurable(
    issuer: Issuer, make_authenticator: Callable[..., OidcAuthenticator]
) -> None:
    authenticator = make_authenticator(
        roles_claim="resource_access.openshell-cli.roles", admin_role="ops", user_role="dev"
    )
    token = issuer.token(
        realm_access={"roles": ["openshell-admin"]},
        resource_access={"openshell-cli": {"roles": ["dev"]}},
    )
    caller = await principal(authenticator, token)
    assert caller.roles == {"dev"}
    assert (caller.platform_admin, caller.user) == (False, True)


LOGIN_SCOPES = "openid profile email offline_access"


@pytest.mark.parametrize(
    ("claim", "expected"),
    [
        (LOGIN_SCOPES + " sandbox:read provider:write", {"sandbox:read", "provider:write"}),
        (["openid", "openshell:all"], {"openshell:all"}),
        (None, set()),
    ],
)  # fmt: skip
async def test_scopes_come_from_the_configured_claim_without_the_login_scopes(
    issuer: Issuer,
    make_authenticator: Callable[..., OidcAuthenticator],
    claim: Any,
    expected: set[str],
) -> None:
    token = issuer.token(scope=claim)
    caller = await principal(make_authenticator(scopes_claim="scope"), token)
    assert caller.scopes == expected


@pytest.mark.parametrize(
    ("claims", "shown"),
    [
        ({"name": "Alice A.", "preferred_username": "alice", "email": "a@x"}, "Alice A."),
        ({"preferred_username": None, "email": "a@x"}, "a@x"),
        ({"preferred_username": None}, "user-1"),
    ],
)
async def test_display_name_prefers_name_then_username_then_email(
    issuer: Issuer,
    make_authenticator: Callable[..., OidcAuthenticator],
    claims: dict[str, Any],
    shown: str,
) -> None:
    caller = await principal(make_authenticator(), issuer.token(**claims))
    assert caller.display_name == shown


def _forgeries(issuer: Issuer) -> dict[str, tuple[str, str]]:
    """Token and the reason it must be refused with."""
    now = int(time.time())
    good = issuer.token()
    stranger = SigningKey.new()
    return {
        "expired": (issuer.token(exp=now - 120), "expired"),
        "not yet valid": (issuer.token(nbf=now + 120), "not valid yet"),
        "wrong audience": (issuer.token(aud="someone-else"), "another audience"),
        "wrong issuer": (issuer.token(iss="http://127.0.0.1:1/realms/evil"), "another issuer"),
        "no expiry": (issuer.token(exp=None), "exp"),
        "no subject": (issuer.token(sub=None), "sub"),
        "unknown key id": (issuer.token(stranger), "does not publish"),
        "published kid, other key": (issuer.token(stranger, kid=issuer.keys[0].kid), "signature"),
        "alg none": (unsigned_token(issuer.claims(), issuer.keys[0].kid), "algorithm"),
        "HS256 with the public key": (
            hmac_with_public_key(issuer.claims(), issuer.keys[0]),
            "algorithm",
        ),
        "tampered payload": (tampered(good, sub="admin"), "signature"),
        "tampered expiry": (tampered(issuer.token(exp=now - 120), exp=now + 600), "signature"),
        "garbage": ("not.a.jwt", "malformed"),
    }


FORGERIES = [
    "expired",
    "not yet valid",
    "wrong audience",
    "wrong issuer",
    "no expiry",
    "no subject",
    "unknown key id",
    "published kid, other key",
    "alg none",
    "HS256 with the public key",
    "tampered payload",
    "tampered expiry",
    "garbage",
]


@pytest.mark.parametrize("case", FORGERIES)
async def test_bad_tokens_are_refused(
    issuer: Issuer, make_authenticator: Callable[..., OidcAuthenticator], case: str
) -> None:
    authenticator = make_authenticator()
    token, reason = _forgeries(issuer)[case]
    with pytest.raises(Unauthenticated, match=reason):
        await authenticator.authenticate(bearer(token))
    assert await principal(authenticator, issuer.token())  # the good token still passes


async def test_clock_skew_within_the_allowance_is_accepted(
    issuer: Issuer, make_authenticator: Callable[..., OidcAuthenticator]
) -> None:
    now = int(time.time())
    authenticator = make_authenticator(clock_skew_seconds=30)
    assert await principal(authenticator, issuer.token(exp=now - 10, nbf=now + 10))
    with pytest.raises(Unauthenticated, match="expired"):
        await authenticator.authenticate(bearer(issuer.token(exp=now - 60)))


async def test_es256_keys_are_accepted_and_a_key_is_only_used_for_its_algorithm(
    issuer: Issuer, make_authenticator: Callable[..., OidcAuthenticator]
) -> None:
    ec_key = SigningKey.new("ES256")
    issuer.keys.append(ec_key)
    authenticator = make_authenticator()
    assert await principal(authenticator, issuer.token(ec_key))
    rsa_key = issuer.keys[0]
    with pytest.raises(Unauthenticated, match="does not match its key"):
        # An RS256 signature presented under the EC key's id.
        await authenticator.authenticate(bearer(issuer.token(rsa_key, kid=ec_key.kid)))


async def test_no_bearer_header_is_not_this_authenticators_business(
    issuer: Issuer, make_authenticator: Callable[..., OidcAuthenticator]
) -> None:
    authenticator = make_authenticator()
    assert await authenticator.authenticate(CallCredentials(metadata={})) is None
    basic = CallCredentials(metadata={"authorization": "Basic dXNlcjpwYXNz"})
    assert await authenticator.authenticate(basic) is None
    with pytest.raises(Unauthenticated, match="empty"):
        await authenticator.authenticate(CallCredentials(metadata={"authorization": "Bearer "}))
    with pytest.raises(Unauthenticated, match="longer than"):
        await authenticator.authenticate(bearer("x" * 20_000))
    assert issuer.jwks_fetches == 0  # nothing worth fetching keys for


async def test_keys_are_fetched_once_and_cached_for_the_ttl(
    issuer: Issuer, make_authenticator: Callable[..., OidcAuthenticator], clock: Clock
) -> None:
    authenticator = make_authenticator(jwks_ttl_seconds=60)
    tokens = [issuer.token(sub=f"user-{n}") for n in range(10)]
    await asyncio.gather(*(principal(authenticator, t) for t in tokens))
    assert issuer.jwks_fetches == 1  # ten callers on a cold cache share one fetch
    clock.now += 59
    await principal(authenticator, issuer.token())
    assert issuer.jwks_fetches == 1
    clock.now += 2  # past the TTL: the cached key answers, a refresh runs behind it
    await principal(authenticator, issuer.token())
    await _settle(lambda: issuer.jwks_fetches == 2)


async def test_rotation_at_the_issuer_is_picked_up_by_the_unknown_kid_refetch(
    issuer: Issuer, make_authenticator: Callable[..., OidcAuthenticator]
) -> None:
    authenticator = make_authenticator()
    old = issuer.keys[0]
    assert await principal(authenticator, issuer.token(old))
    new = SigningKey.new()
    issuer.keys = [new]  # the issuer rotates and withdraws the old key
    caller = await principal(authenticator, issuer.token(new))
    assert caller.subject == "user-1"
    assert issuer.jwks_fetches == 2
    with pytest.raises(Unauthenticated, match="does not publish"):
        await authenticator.authenticate(bearer(issuer.token(old)))  # withdrawn: refused


async def test_unknown_kid_refetches_are_rate_limited(
    issuer: Issuer, make_authenticator: Callable[..., OidcAuthenticator], clock: Clock
) -> None:
    authenticator = make_authenticator(min_refetch_seconds=10)
    assert await principal(authenticator, issuer.token())
    for n in range(20):
        with pytest.raises(Unauthenticated, match="does not publish"):
            await authenticator.authenticate(
                bearer(issuer.token(SigningKey.new("ES256"), kid=f"k{n}"))
            )
    assert issuer.jwks_fetches == 2  # the first cold fetch, then one refetch for unknown kids
    clock.now += 10
    rotated = SigningKey.new()
    issuer.keys.append(rotated)
    assert await principal(authenticator, issuer.token(rotated))  # the next window refetches
    assert issuer.jwks_fetches == 3


async def test_cached_keys_keep_working_while_the_issuer_is_down(
    issuer: Issuer, make_authenticator: Callable[..., OidcAuthenticator], clock: Clock
) -> None:
    authenticator = make_authenticator(jwks_ttl_seconds=60)
    assert await principal(authenticator, issuer.token())
    await issuer.stop()
    clock.now += 3600  # long past the TTL: refreshes fail, the cached key still answers
    for _ in range(3):
        assert await principal(authenticator, issuer.token())
        clock.now += 20
    with pytest.raises(Unauthenticated, match="does not publish"):
        await authenticator.authenticate(bearer(issuer.token(SigningKey.new())))
    await issuer.start()  # back on the same port: the next refresh brings new keys
    clock.now += 60
    added = SigningKey.new()
    issuer.keys.append(added)
    assert await principal(authenticator, issuer.token(added))


async def test_an_issuer_that_was_never_reachable_refuses_quickly(
    make_authenticator: Callable[..., OidcAuthenticator], issuer: Issuer
) -> None:
    token = issuer.token()
    await issuer.stop()
    authenticator = make_authenticator()
    started = time.monotonic()
    with pytest.raises(Unauthenticated, match="does not publish"):
        await authenticator.authenticate(bearer(token))
    assert time.monotonic() - started < 2


async def test_a_slow_issuer_does_not_block_the_event_loop(
    issuer: Issuer, make_authenticator: Callable[..., OidcAuthenticator]
) -> None:
    slow = web.Application()
    release = asyncio.Event()

    async def discovery(_request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"issuer": issuer.url, "jwks_uri": f"{issuer.url}/certs"})

    await issuer.stop()
    slow.router.add_get("/realms/test/.well-known/openid-configuration", discovery)
    runner = web.AppRunner(slow, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", issuer.port).start()
    try:
        verify = asyncio.create_task(make_authenticator().authenticate(bearer(issuer.token())))
        ticks = 0
        for _ in range(20):  # the loop keeps running while the fetch waits on the issuer
            await asyncio.sleep(0.01)
            ticks += 1
        assert not verify.done() and ticks == 20
        release.set()
        with pytest.raises(Unauthenticated):  # this stand-in serves no JWKS
            await verify
    finally:
        release.set()
        await runner.cleanup()


@pytest.mark.parametrize(
    ("issuer_url", "ok"),
    [
        ("https://idp.example.com/realms/x", True),
        ("http://127.0.0.1:8080/realms/x", True),
        ("http://localhost:8080/realms/x", True),
        ("http://idp.example.com/realms/x", False),  # keys over plain HTTP: forgeable
        ("ftp://idp.example.com", False),
        ("idp.example.com", False),
    ],
)
def test_issuer_url_must_be_https_off_loopback(issuer_url: str, ok: bool) -> None:
    if ok:
        OidcSettings(issuer=issuer_url)
    else:
        with pytest.raises(ConfigurationError, match="https"):
            OidcSettings(issuer=issuer_url)


async def _settle(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)
