"""Frames that do not decode answer INVALID_ARGUMENT, never UNKNOWN.

Sent as raw bytes on a real channel, the way a broken or hostile client would send them.
"""

from __future__ import annotations

import grpc
import pytest

from shellgate.api import openshell_pb2
from tests.gateway.conftest import Running

P = openshell_pb2
SERVICE = "/openshell.v1.OpenShell/"


def nested_struct_request(depth: int) -> bytes:
    """A CreateSandboxRequest whose spec.template.resources nests ``depth`` Structs."""
    request = P.CreateSandboxRequest(name="deep", spec=P.SandboxSpec())
    inner = request.spec.template.resources
    for _ in range(depth):
        inner = inner.fields["k"].struct_value
    return request.SerializeToString()


INVALID_UTF8_NAME = b"\x12\x02\xff\xfe"  # field 2 (name), a string of two invalid bytes

UNDECODABLE = [
    pytest.param("CreateSandbox", INVALID_UTF8_NAME, id="invalid utf-8"),
    pytest.param("GetSandbox", b"\xff\xff\xff\xff", id="corrupt wire format"),
    pytest.param("CreateSandbox", b"\x0a\x10\x00", id="truncated field"),
    pytest.param("WatchSandbox", INVALID_UTF8_NAME[:1] + b"\x05abc", id="stream: truncated"),
]


async def call_raw(gw: Running, method: str, payload: bytes) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(gw.address) as channel:
        if method == "WatchSandbox":
            stream = channel.unary_stream(SERVICE + method)(payload)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for _ in stream:
                    pass
        else:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await channel.unary_unary(SERVICE + method)(payload)
    return caught.value


@pytest.mark.parametrize(("method", "payload"), UNDECODABLE)
async def test_undecodable_frames_are_invalid_argument(
    gw: Running, method: str, payload: bytes
) -> None:
    error = await call_raw(gw, method, payload)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    listed = await gw.stub.ListSandboxes(P.ListSandboxesRequest())
    assert list(listed.sandboxes) == []


async def test_structs_nested_past_the_decoder_limit_are_invalid_argument(gw: Running) -> None:
    error = await call_raw(gw, "CreateSandbox", nested_struct_request(40))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    shallow = nested_struct_request(3)
    async with grpc.aio.insecure_channel(gw.address) as channel:
        answer = await channel.unary_unary(SERVICE + "CreateSandbox")(shallow)
    assert P.SandboxResponse.FromString(answer).sandbox.metadata.name == "deep"
