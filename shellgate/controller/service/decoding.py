"""Requests that do not decode answer INVALID_ARGUMENT, with one log line.

grpcio decodes a request before any handler runs; when that fails (invalid UTF-8 in a string
field, a corrupt frame, nesting deeper than protobuf's recursion limit) it answers UNKNOWN
"Unexpected DecodeError" and logs a traceback per request, so a client cannot tell its own
mistake from a server bug, and a flood of bad frames floods the log. This interceptor takes
the decoding over: the handler grpcio would run receives raw bytes, decodes them with the
method's own deserializer, and a failure becomes INVALID_ARGUMENT before the handler is
called. Streamed requests (ExecSandboxInteractive) are decoded by grpcio as they arrive;
that handler turns a DecodeError into INVALID_ARGUMENT itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from shellgate.controller.metrics import Metrics

log = logging.getLogger(__name__)

Decode = Callable[[bytes], Any]


class RejectUndecodableRequests(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method.rsplit("/", 1)[-1]
        decode = self._decoder(method, handler.request_deserializer)
        if handler.response_streaming:
            return _stream_handler(handler, decode)
        return _unary_handler(handler, decode)

    def _decoder(
        self, method: str, deserializer: Decode
    ) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def decode(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                return deserializer(raw)
            except (DecodeError, RecursionError, ValueError) as exc:
                log.warning("%s: request of %d bytes does not decode: %s", method, len(raw), exc)
                self._metrics.grpc_requests.labels(method=method, code="INVALID_ARGUMENT").inc()
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "the request does not decode as a valid protobuf message of this method",
                )

        return decode


def _unary_handler(
    handler: grpc.RpcMethodHandler,
    decode: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]],
) -> grpc.RpcMethodHandler:
    inner = handler.unary_unary

    async def unary(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        return await inner(await decode(raw, context), context)

    return grpc.unary_unary_rpc_method_handler(
        unary, response_serializer=handler.response_serializer
    )


def _stream_handler(
    handler: grpc.RpcMethodHandler,
    decode: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]],
) -> grpc.RpcMethodHandler:
    inner = handler.unary_stream

    async def stream(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for response in inner(await decode(raw, context), context):
            yield response

    return grpc.unary_stream_rpc_method_handler(
        stream, response_serializer=handler.response_serializer
    )
