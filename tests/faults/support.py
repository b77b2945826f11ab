"""What the fault tests share: readiness polling, error details, a logged client history."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2

from tests.support.processes import GatewayProcess, http_get


def retry_info_of(error: grpc.aio.AioRpcError) -> error_details_pb2.RetryInfo | None:
    """The RetryInfo in the error's rich status, if any."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.RetryInfo()
                if detail.Unpack(info):
                    return info
    return None


async def ready(process: GatewayProcess) -> bool:
    status, _ = await asyncio.to_thread(http_get, f"{process.http}/readyz", 1.0)
    return status == 200


async def seconds_until(process: GatewayProcess, want_ready: bool, timeout: float) -> float:
    """Seconds until /readyz says ``want_ready``; fails after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await ready(process) == want_ready:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz of {process.replica_id} not {want_ready} within {timeout} s")


@dataclass
class Call:
    """One client call as the history checker sees it: invoked, answered, with what."""

    op: str
    key: str
    value: object
    invoked: float
    answered: float = 0.0
    code: str = ""
    result: object = None
    retry_info: bool = False  # an error carried a RetryInfo


@dataclass
class History:
    calls: list[Call] = field(default_factory=list)

    def codes(self) -> set[str]:
        return {c.code for c in self.calls}

    def acknowledged(self, op: str) -> list[Call]:
        return [c for c in self.calls if c.op == op and c.code == "OK"]
