"""Follow the store's intent for sandboxes only this replica's driver can touch.

With the local driver each sandbox is a child process of one replica. A stop, start or delete
that reaches another replica only moves the row to STOPPING, STARTING or DELETING; the owner
learns of it here, from the store's change feed, and asks its driver. Driver operations are
idempotent, so acting on a hint twice is harmless. Drivers whose every replica can act on
every sandbox (Kubernetes) do not need this loop.
"""

from __future__ import annotations

import asyncio
import logging

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.base import DriverError
from shellgate.controller.gateway import Gateway
from shellgate.store import StoreError
from shellgate.store.repositories import SANDBOX_TYPE

log = logging.getLogger(__name__)

Sandbox = openshell_pb2.Sandbox
TRANSITIONAL = frozenset(
    {
        openshell_pb2.SANDBOX_PHASE_STOPPING,
        openshell_pb2.SANDBOX_PHASE_STARTING,
        openshell_pb2.SANDBOX_PHASE_DELETING,
    }
)
RETRY_SECONDS = 1.0


async def run_intent_loop(gw: Gateway) -> None:
    while True:
        try:
            async with gw.store.subscribe() as feed:
                await follow_all(gw)
                while True:
                    hint = await feed.get()
                    if hint.object_type not in (None, SANDBOX_TYPE) or hint.deleted:
                        continue
                    if hint.id is None:
                        await follow_all(gw)
                    elif gw.driver.owns(hint.id):
                        await follow_one(gw, hint.id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("intent loop failed; restarting in %.0f s", RETRY_SECONDS)
            await asyncio.sleep(RETRY_SECONDS)


async def follow_all(gw: Gateway) -> None:
    token = ""
    while True:
        page, token = await gw.store.list_messages(
            Sandbox, workspace=None, limit=1000, page_token=token
        )
        for sandbox in page:
            if sandbox.status.phase in TRANSITIONAL and gw.driver.owns(sandbox.metadata.id):
                await act(gw, sandbox)
        if not token:
            return


async def follow_one(gw: Gateway, sandbox_id: str) -> None:
    try:
        sandbox = await gw.store.get_message(Sandbox, sandbox_id)
    except StoreError as exc:
        log.warning("intent loop: cannot read sandbox %s: %s", sandbox_id, exc)
        return
    if sandbox is not None and sandbox.status.phase in TRANSITIONAL:
        await act(gw, sandbox)


async def act(gw: Gateway, sandbox: Sandbox) -> None:
    """Ask the driver for what the row's phase says; a failure is logged and left to the next
    hint or the sweep, and never keeps the loop from the other sandboxes."""
    sandbox_id = sandbox.metadata.id
    phase = sandbox.status.phase
    try:
        if phase == openshell_pb2.SANDBOX_PHASE_STOPPING:
            await gw.driver.stop_sandbox(sandbox_id)
        elif phase == openshell_pb2.SANDBOX_PHASE_STARTING:
            await gw.driver.start_sandbox(sandbox_id)
        elif phase == openshell_pb2.SANDBOX_PHASE_DELETING:
            await gw.driver.delete_sandbox(sandbox_id)
    except DriverError as exc:  # DriverNotOwner included: someone else's after all
        log.warning("intent loop: %s of sandbox %s failed: %s", phase, sandbox_id, exc)
