"""Error answers fit in the client's metadata limit, whatever the input quoted.

Found by fuzzing: ``GetSandbox(name="a" * 20000)`` and 128 bad label keys (16,656 bytes of
BadRequest) exceeded the 8-16 KiB a gRPC client accepts in trailers, so the client saw
RESOURCE_EXHAUSTED "Stream removed" instead of the real status.
"""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from shellgate.api import openshell_pb2
from shellgate.controller.service.errors import MAX_MESSAGE, MAX_VIOLATIONS
from tests.gateway.conftest import Running
from tests.support.status_size import wire_bytes

P = openshell_pb2
CLIENT_METADATA_LIMIT = 8 * 1024


async def refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    error = caught.value
    trailers = error.trailing_metadata() or ()
    size = sum(len(key) + len(value) for key, value in trailers)
    assert size < CLIENT_METADATA_LIMIT / 2, f"{size} bytes of trailers"
    assert len(error.details() or "") <= MAX_MESSAGE
    return error


async def test_a_huge_name_answers_its_real_code(gw: Running) -> None:
    error = await refused(gw.stub.GetSandbox(P.GetSandboxRequest(name="a" * 20_000)))
    assert error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)


async def test_many_bad_labels_list_a_bounded_number_of_violations(gw: Running) -> None:
    labels = {f"bad key {n} " + "x" * 100: "v" for n in range(128)}
    request = P.CreateSandboxRequest(name="ok", spec=P.SandboxSpec(), labels=labels)
    error = await refused(gw.stub.CreateSandbox(request))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(error)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert 1 <= len(bad_request.field_violations) <= MAX_VIOLATIONS
    listed = await gw.stub.ListSandboxes(P.ListSandboxesRequest())
    assert list(listed.sandboxes) == []


async def test_a_huge_selector_key_is_quoted_short(gw: Running) -> None:
    error = await refused(
        gw.stub.ListSandboxes(P.ListSandboxesRequest(label_selector="k" * 4000 + "=v"))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_non_ascii_input_keeps_the_status_within_the_limit_in_bytes(gw: Running) -> None:
    """Found by the fuzz suite: messages were cut to 1,024 characters, and descriptions to
    256, but an emoji is four bytes, sent percent-encoded (three characters a byte) in the
    message and base64 in the details: the same answer took over 1 KiB of details and more
    than the client's 8 KiB of trailers."""
    labels = {f"{n}" + "\U0001f600" * 300: "v" for n in range(MAX_VIOLATIONS + 2)}
    request = P.CreateSandboxRequest(name="ok", spec=P.SandboxSpec(), labels=labels)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.CreateSandbox(request)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len((error.details() or "").encode()) <= MAX_MESSAGE
    assert wire_bytes(error) < CLIENT_METADATA_LIMIT
