"""The gateway process of ``bench.scale``'s watch fan-out.

The gRPC API over a store, with a driver that does nothing and no reconcile loops, so the CPU
this process spends while the benchmark writes is what its WatchSandbox streams cost (the
change feed, the wake-ups, the re-reads, the sends). Run as
``python -m bench.scale_server DATABASE_URL PORT_FILE``: it writes its port to PORT_FILE when
it serves and runs until killed.
"""

from __future__ import annotations

import asyncio
import secrets
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from shellgate.api import openshell_pb2
from shellgate.controller.app.serve import start_grpc
from shellgate.controller.drivers.base import DriverEvent
from shellgate.controller.gateway import Gateway
from shellgate.controller.limits import Limits
from shellgate.controller.metrics import Metrics
from shellgate.reconcilers.snapshot import DriverSnapshot
from shellgate.store import connect
from shellgate.store.secrets import KEY_BYTES, Keyring, SecretSealer

MAX_STREAMS = 20_000


class IdleDriver:
    """A compute driver with nothing to run: the benchmark only reads and watches rows."""

    name = "idle"
    routes_by_owner = False
    watch_ready = True

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def create_sandbox(self, sandbox: openshell_pb2.Sandbox) -> None:
        return None

    async def delete_sandbox(self, sandbox_id: str) -> bool:
        return False

    def owns(self, sandbox_id: str) -> bool:
        return True

    async def stop_sandbox(self, sandbox_id: str) -> None:
        return None

    async def start_sandbox(self, sandbox_id: str) -> None:
        return None

    async def get_sandbox(self, sandbox_id: str) -> DriverSnapshot | None:
        return None

    async def list_sandboxes(self) -> list[DriverSnapshot]:
        return []

    def attach(self, sink: Callable[[DriverEvent], None]) -> Callable[[], None]:
        return lambda: None

    async def events(self) -> AsyncIterator[DriverEvent]:
        await asyncio.Event().wait()
        yield  # type: ignore[misc]  # never reached: an async generator with no events


async def serve(url: str, port_file: Path) -> None:
    store = await connect(url)
    limits = Limits(max_watch_streams=MAX_STREAMS, max_concurrent_rpcs=MAX_STREAMS)
    gateway = Gateway(
        store=store,
        driver=IdleDriver(),  # type: ignore[arg-type]
        metrics=Metrics(),
        replica_id="bench",
        sealer=SecretSealer(Keyring([secrets.token_bytes(KEY_BYTES)])),
        limits=limits,
    )
    _server, _health, port = await start_grpc(gateway, "127.0.0.1:0")
    _announce(port_file, port)
    await asyncio.Event().wait()


def _announce(port_file: Path, port: int) -> None:
    port_file.write_text(str(port))


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], Path(sys.argv[2])))
