"""Page tokens are opaque, versioned and bounded: a crafted one is INVALID_ARGUMENT.

Found by fuzzing: ``b64("[" * 100000)`` hit a RecursionError in the JSON decoder,
``"9" * 5000`` an unbounded ``int()``, ``str(2**64)`` an OverflowError in SQLite, and
``str.isdecimal`` took other scripts' digits; each answered INTERNAL.
"""

from __future__ import annotations

import base64

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from shellgate.api import openshell_pb2
from shellgate.store.paging import (
    MAX_TOKEN_LENGTH,
    encode_offset_token,
    encode_page_token,
    encode_version_token,
)
from tests.gateway.conftest import Running

P = openshell_pb2


def b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


CRAFTED = [
    pytest.param(b64("[" * 100_000), id="deep json"),
    pytest.param("9" * 5000, id="5000 digits"),
    pytest.param(str(2**64), id="2**64"),
    pytest.param("\u0661\u0662", id="arabic-indic digits"),
    pytest.param(b64("1|key|" + "9" * 30 + ":x"), id="key position too large"),
    pytest.param(b64("1|version|" + str(2**64)), id="version beyond int64"),
    pytest.param(b64("2|key|1:x"), id="unknown format"),
    pytest.param(b64("1|key|-1:x"), id="negative"),
    pytest.param(b64("1|key|1:"), id="no id"),
    pytest.param("\x00\xff", id="not base64"),
    pytest.param("A" * (MAX_TOKEN_LENGTH + 1), id="too long"),
]


async def rejected(call: object) -> str:
    """The call answers INVALID_ARGUMENT on page_token, with a short message."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(caught.value)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["page_token"]
    assert len(caught.value.details() or "") < 200
    return caught.value.details() or ""


async def seeded(gw: Running) -> None:
    await gw.stub.CreateSandbox(P.CreateSandboxRequest(name="alpha", spec=P.SandboxSpec()))


@pytest.mark.parametrize("token", CRAFTED)
async def test_crafted_tokens_on_every_paged_list(gw: Running, token: str) -> None:
    await seeded(gw)
    await rejected(gw.stub.ListSandboxes(P.ListSandboxesRequest(page_token=token)))
    await rejected(gw.stub.ListProviders(P.ListProvidersRequest(page_token=token)))
    await rejected(
        gw.stub.ListSandboxProviders(
            P.ListSandboxProvidersRequest(sandbox="alpha", page_token=token)
        )
    )
    await rejected(
        gw.stub.ListSandboxPolicies(P.ListSandboxPoliciesRequest(sandbox="alpha", page_token=token))
    )


async def test_a_token_from_one_list_is_refused_by_another(gw: Running) -> None:
    await seeded(gw)
    key, version, offset = (
        encode_page_token(1, "x"),
        encode_version_token(3),
        encode_offset_token(1),
    )
    policies = P.ListSandboxPoliciesRequest(sandbox="alpha", page_token=key)
    await rejected(gw.stub.ListSandboxPolicies(policies))
    await rejected(gw.stub.ListSandboxes(P.ListSandboxesRequest(page_token=version)))
    providers = P.ListSandboxProvidersRequest(sandbox="alpha", page_token=version)
    await rejected(gw.stub.ListSandboxProviders(providers))
    await rejected(gw.stub.ListProviders(P.ListProvidersRequest(page_token=offset)))
