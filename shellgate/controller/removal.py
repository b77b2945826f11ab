"""Removing a sandbox row: the one path every remover takes.

A sandbox row goes away in three places: DeleteSandbox when the driver had nothing, the watch
loop when the driver confirms the object is gone, and the sweep when the compute resource
vanished. Each removes it with ``delete_if`` bound to the version it read, and the one that
wins also removes what the sandbox owned (settings, policy revisions, draft chunks) and its
in-memory platform events. A loser (Conflict) leaves the work to the newer version's owner.
"""

from __future__ import annotations

import logging

from shellgate.controller.config_store import cleanup_sandbox_config
from shellgate.controller.gateway import Gateway
from shellgate.store import Conflict

log = logging.getLogger(__name__)


async def remove_sandbox_row(gw: Gateway, sandbox_id: str, version: int, name: str) -> bool:
    """Delete the row at ``version`` and its owned records; False if it was not ours to do."""
    try:
        removed = await gw.store.delete_if("sandbox", sandbox_id, version)
    except Conflict:
        return False
    if removed:
        gw.events.forget(sandbox_id)
        await cleanup_sandbox_config(gw, sandbox_id, name)
    return removed


async def remove_sandbox(gw: Gateway, sandbox_id: str, attempts: int = 5) -> bool | None:
    """Remove the row at whatever version it has now, re-reading after a lost race.

    True when this call removed it, False when it was already gone, None when every attempt
    lost to a concurrent writer (the sweep finishes the job).
    """
    for _ in range(attempts):
        record = await gw.store.get("sandbox", sandbox_id)
        if record is None:
            gw.events.forget(sandbox_id)
            return False
        if await remove_sandbox_row(gw, sandbox_id, record.resource_version, record.name or ""):
            return True
    return None
