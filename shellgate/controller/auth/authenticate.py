"""The authentication interceptor: every call gets a verified ``Principal`` or is refused.

It wraps each method handler, whatever its streaming shape, so that the handler runs with
``CURRENT_PRINCIPAL`` set to the caller. Authenticators are tried in order; the first that
recognises credentials of its kind decides. Credentials present but invalid answer
UNAUTHENTICATED at once (a bad token is never overlooked because a later authenticator
might accept something else). With no credentials at all, the call runs as ``anonymous``
when the gateway was started without authentication, and is refused otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from shellgate.controller.auth.principal import CURRENT_PRINCIPAL, NOBODY, Principal

log = logging.getLogger(__name__)

PUBLIC_METHOD_PREFIXES = (
    "/openshell.v1.OpenShell/Health",
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)
"""Methods anyone may call: liveness, and the schema (which is public anyway)."""


class Unauthenticated(Exception):
    """Credentials were presented but are not valid; the message says why (no secrets)."""


@dataclass(frozen=True, slots=True)
class CallCredentials:
    """What a call presents: its metadata (keys lower-case) and, over mTLS, the subject of
    the client certificate the TLS layer verified."""

    metadata: Mapping[str, str]
    peer_certificate_subject: str | None = None


class Authenticator(Protocol):
    async def authenticate(self, call: CallCredentials) -> Principal | None:
        """The caller; None when there are no credentials of this kind; raises
        ``Unauthenticated`` when there are and they do not verify."""


def call_credentials(context: grpc.aio.ServicerContext) -> CallCredentials:
    metadata = {key.lower(): value for key, value in (context.invocation_metadata() or ())}
    subject = None
    auth = context.auth_context() or {}
    if auth.get("transport_security_type") == [b"ssl"]:
        names = auth.get("x509_subject") or auth.get("x509_common_name") or []
        if names:
            subject = names[0].decode("utf-8", "replace")
    return CallCredentials(
        metadata={k: v for k, v in metadata.items() if isinstance(v, str)},
        peer_certificate_subject=subject,
    )


class AuthenticateCalls(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(
        self,
        authenticators: Sequence[Authenticator],
        *,
        anonymous: Principal | None,
        public_prefixes: Sequence[str] = PUBLIC_METHOD_PREFIXES,
    ) -> None:
        self._authenticators = tuple(authenticators)
        self._anonymous = anonymous
        self._public = tuple(public_prefixes)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if method.startswith(self._public):
            return _with_principal(handler, _public_principal)
        return _with_principal(handler, self._principal_for)

    async def _principal_for(self, context: grpc.aio.ServicerContext) -> Principal:
        call = call_credentials(context)
        for authenticator in self._authenticators:
            try:
                principal = await authenticator.authenticate(call)
            except Unauthenticated as exc:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
                raise  # unreachable: abort raises
            except Exception:
                # A broken authenticator must not answer UNKNOWN with a traceback, nor let
                # the call through: the caller may retry once authentication works again.
                log.exception("authenticator %s failed", type(authenticator).__name__)
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "authentication is unavailable; retry later"
                )
            if principal is not None:
                return principal
        if self._anonymous is not None:
            return self._anonymous
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "authentication required")
        raise AssertionError("unreachable: abort raises")


async def _public_principal(context: grpc.aio.ServicerContext) -> Principal:
    return NOBODY


Resolve = Callable[[grpc.aio.ServicerContext], Awaitable[Principal]]


def _with_principal(handler: grpc.RpcMethodHandler, resolve: Resolve) -> grpc.RpcMethodHandler:
    """The same handler, run with ``CURRENT_PRINCIPAL`` set to what ``resolve`` answers."""
    serializers: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            _streaming(handler.stream_stream, resolve), **serializers
        )
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(
            _unary(handler.stream_unary, resolve), **serializers
        )
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(
            _streaming(handler.unary_stream, resolve), **serializers
        )
    return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, resolve), **serializers)


def _unary(inner: Any, resolve: Resolve) -> Callable[..., Awaitable[Any]]:
    async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
        token = CURRENT_PRINCIPAL.set(await resolve(context))
        try:
            return await inner(request, context)
        finally:
            CURRENT_PRINCIPAL.reset(token)

    return behaviour


def _streaming(inner: Any, resolve: Resolve) -> Callable[..., AsyncIterator[Any]]:
    async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        CURRENT_PRINCIPAL.set(await resolve(context))
        async for response in inner(request, context):
            yield response

    return behaviour
