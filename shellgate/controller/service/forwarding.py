"""Forwarding a call about a sandbox to the replica that runs it (local driver only).

With the local driver a sandbox is a child process of one replica, its owner (recorded in the
row). Exec and logs need that process, so a replica that receives such a call for a sandbox it
does not own relays it, unchanged, to the owner's gRPC address (recorded in the owner's
heartbeat row), and relays the answer back, status and details included. When the owner
cannot be reached the answer is UNAVAILABLE naming the owner: never another replica's "no
such process", which would be a silent wrong answer.

The caller's ``authorization`` metadata travels with the call, so the owner authenticates
and authorizes the original caller. A forwarded call also names the replica it was meant for
(``x-shellgate-forwarded-to``): a replica that is not that one (the address now belongs to
someone else) or that does not own the sandbox either answers UNAVAILABLE instead of
forwarding again, so a call is relayed at most once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status

from shellgate.api import openshell_pb2, openshell_pb2_grpc
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import RequestError
from shellgate.reconcilers.ownership import owner_of
from shellgate.store.errors import quoted

log = logging.getLogger(__name__)

FORWARDED_TO = "x-shellgate-forwarded-to"
PASSED_METADATA = ("authorization",)


class PeerStatus(Exception):
    """The owner's answer to a forwarded call, to be sent to our caller as it is."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.details)
        self.status = status


def forwarded_to(context: Any) -> str | None:
    """The replica a forwarded call was meant for; None for a caller's own call."""
    for key, value in context.invocation_metadata() or ():
        if key.lower() == FORWARDED_TO and isinstance(value, str):
            return value
    return None


def refuse_misrouted(gw: Gateway, context: Any) -> None:
    """A forwarded call that reached the wrong replica is refused, never served or relayed."""
    target = forwarded_to(context)
    if target is not None and target != gw.replica_id:
        raise RequestError(
            grpc.StatusCode.UNAVAILABLE,
            f"this call was forwarded to replica {quoted(target)} but reached replica "
            f"{quoted(gw.replica_id)}; its address changed, retry",
        )


def needs_forwarding(gw: Gateway, sandbox: openshell_pb2.Sandbox, context: Any) -> bool:
    """True when another replica runs the sandbox; a call already forwarded once that still
    lands on a non-owner is refused rather than relayed again."""
    if not gw.owned_elsewhere(sandbox):
        return False
    if forwarded_to(context) is not None:
        raise RequestError(
            grpc.StatusCode.UNAVAILABLE,
            f"sandbox {quoted(sandbox.metadata.name)} is not run by replica "
            f"{quoted(gw.replica_id)}, which this call was forwarded to",
        )
    return True


class Owner:
    """A connection to the replica that runs ``sandbox``, for one forwarded call."""

    def __init__(self, gw: Gateway, sandbox: openshell_pb2.Sandbox, context: Any) -> None:
        self.replica = owner_of(sandbox) or ""
        self.sandbox_name = sandbox.metadata.name
        self._gw = gw
        self._context = context
        self.address = ""
        self._channel: grpc.aio.Channel | None = None

    async def __aenter__(self) -> tuple[Owner, openshell_pb2_grpc.OpenShellStub]:
        address = await self._gw.repos.replicas.address_of(self.replica)
        if address is None:
            raise self.unreachable("its address is not recorded (it never started, or is older)")
        self.address = address
        self._channel = grpc.aio.insecure_channel(
            address, options=[("grpc.max_receive_message_length", -1)]
        )
        stub = openshell_pb2_grpc.OpenShellStub(self._channel)  # type: ignore[no-untyped-call]
        return self, stub

    async def __aexit__(self, *exc: object) -> None:
        if self._channel is not None:
            await self._channel.close()

    def call_options(self) -> dict[str, Any]:
        """The caller's credentials and remaining deadline, and whom the call is for."""
        passed = [
            (key.lower(), value)
            for key, value in self._context.invocation_metadata() or ()
            if key.lower() in PASSED_METADATA
        ]
        remaining = self._context.time_remaining()
        return {
            "metadata": [*passed, (FORWARDED_TO, self.replica)],
            "timeout": remaining if remaining is not None and remaining < 1e9 else None,
        }

    def unreachable(self, why: str) -> RequestError:
        where = f" at {self.address}" if self.address else ""
        return RequestError(
            grpc.StatusCode.UNAVAILABLE,
            f"sandbox {quoted(self.sandbox_name)} runs on replica {quoted(self.replica)}{where}, "
            f"which cannot be reached: {why}",
        )

    def relay_error(self, error: grpc.aio.AioRpcError) -> Exception:
        """The owner's error as our answer; a transport failure names the owner."""
        if error.code() == grpc.StatusCode.UNAVAILABLE and not _answered_by_peer(error):
            log.warning("owner %s of %s unreachable: %s", self.replica, self.sandbox_name, error)
            return self.unreachable((error.details() or "connection failed")[:200])
        return PeerStatus(_status_of(error))


def _answered_by_peer(error: grpc.aio.AioRpcError) -> bool:
    """A status the owner's handler sent carries our rich details; a transport failure
    (connection refused, reset) does not."""
    return any(key == "grpc-status-details-bin" for key, _ in error.trailing_metadata() or ())


def _status_of(error: grpc.aio.AioRpcError) -> grpc.Status:
    try:
        rich = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        rich = None
    if rich is None:
        rich = status_pb2.Status(code=error.code().value[0], message=error.details() or "")
    return rpc_status.to_status(rich)


async def relay_stream(owner: Owner, call: Any) -> AsyncIterator[Any]:
    """Every message of the owner's stream; its error becomes ours."""
    try:
        async for message in call:
            yield message
    except grpc.aio.AioRpcError as error:
        raise owner.relay_error(error) from None
