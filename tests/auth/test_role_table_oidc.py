"""The role table end to end with real tokens: the same probes and expectations as
tests/gateway/test_role_table.py, but every caller presents a JWT minted by a throwaway OIDC
issuer and verified by the gateway's real ``OidcAuthenticator`` (discovery, JWKS over HTTP,
signature, audience, expiry), with scope checks on (``--oidc-scopes-claim scope``).

The platform admin is an admin by its token's role claim alone; it then creates both
workspaces and adds every other caller as a member through ``AddWorkspaceMember``, keyed by
the token's ``sub``. So the check proves the whole chain: claims → principal → membership
lookup by subject → decision → handler, on both backends, for every documented RPC.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shellgate.controller.auth.oidc import OidcAuthenticator, OidcSettings
from shellgate.store import Store
from tests.support.fake_driver import FakeDriver
from tests.support.gateway import Running, running_gateway
from tests.support.oidc_issuer import Issuer
from tests.support.role_table import (
    ALL_SCOPES,
    CALLERS,
    Caller,
    Metadata,
    P,
    documented_variants,
    mismatches,
    probed,
    seed,
)
from tests.support.rpc_table import documented_rpcs

LOGIN_SCOPES = "openid profile email"
"""What every login carries besides the gateway's scopes; it grants nothing."""


def token_for(issuer: Issuer, caller: Caller) -> str:
    """A token whose claims say what ``caller`` is: its subject, name, realm roles, and its
    scopes (``openshell:all`` for a caller without a restriction, as a full-access client
    would be configured at the issuer)."""
    scopes = sorted(caller.scopes) if caller.scopes is not None else [ALL_SCOPES]
    return issuer.token(
        sub=caller.subject,
        preferred_username=caller.display_name,
        realm_access={"roles": sorted(caller.roles)},
        scope=" ".join([LOGIN_SCOPES, *scopes]),
    )


@pytest.fixture
async def secured(store: Store, issuer: Issuer) -> AsyncIterator[tuple[Running, dict[str, str]]]:
    authenticator = OidcAuthenticator(OidcSettings(issuer=issuer.url, scopes_claim="scope"))
    tokens = {name: token_for(issuer, caller) for name, caller in CALLERS.items()}
    try:
        async with running_gateway(
            store, FakeDriver(), authenticators=[authenticator], anonymous=None
        ) as gw:
            await seed(gw.stub, bearer(tokens["padmin"]))
            yield gw, tokens
    finally:
        await authenticator.keys.aclose()


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


async def test_every_rpc_answers_as_the_table_says_with_real_tokens(
    secured: tuple[Running, dict[str, str]], issuer: Issuer
) -> None:
    gw, tokens = secured
    rpcs, variants = probed()
    assert rpcs == set(documented_rpcs()), "every documented RPC is probed"
    assert variants == documented_variants(), "every documented variant is probed"
    found = await mismatches(gw.stub, lambda name: bearer(tokens[name]))
    assert not found, "\n".join(found)
    assert issuer.jwks_fetches >= 1  # the keys really came from the issuer


async def test_current_user_is_what_the_token_says(
    secured: tuple[Running, dict[str, str]],
) -> None:
    gw, tokens = secured
    reader = CALLERS["reader"]
    me = await gw.stub.GetCurrentUser(P.GetCurrentUserRequest(), metadata=bearer(tokens["reader"]))
    assert (me.subject, me.display_name, me.identity_provider) == (
        reader.subject,
        reader.display_name,
        "oidc",
    )
    assert set(me.roles) == reader.roles and set(me.scopes) == reader.scopes
    admin = bearer(tokens["padmin"])
    info = await gw.stub.GetGatewayInfo(P.GetGatewayInfoRequest(), metadata=admin)
    assert list(info.extensions[0].supported_capabilities) == ["oidc"]


async def test_members_are_found_by_subject_not_by_name(
    secured: tuple[Running, dict[str, str]], issuer: Issuer
) -> None:
    """A token with a member's display name and roles but another subject is nobody's member:
    memberships follow the verified ``sub``, never a name a user may choose at the issuer."""
    gw, tokens = secured
    wuser = CALLERS["wuser"]
    impostor = issuer.token(
        sub="sub-someone-else",
        preferred_username=wuser.display_name,
        realm_access={"roles": sorted(wuser.roles)},
        scope=f"{LOGIN_SCOPES} {ALL_SCOPES}",
    )
    mine = await gw.stub.ListWorkspaces(P.ListWorkspacesRequest(), metadata=bearer(impostor))
    assert list(mine.workspaces) == []
    real = await gw.stub.ListWorkspaces(P.ListWorkspacesRequest(), metadata=bearer(tokens["wuser"]))
    assert [w.metadata.name for w in real.workspaces] == sorted(wuser.memberships)
