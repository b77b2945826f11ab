"""Gateway and sandbox settings rows: ids, registration, and the create-or-update loop.

Settings are read-mutate-CAS through ``update_message_cas`` with a pure mutation the
controller passes in. A row is created with ``MUST_CREATE`` on first use; losing that create
race (``UniqueViolation``) means another writer created it, so the loop reads it and applies
the change again. A change that leaves a missing row empty (deleting an unset key) writes
nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from shellgate.api import internal_pb2
from shellgate.store.base import Store
from shellgate.store.errors import NotFound, UniqueViolation
from shellgate.store.messages import register_object_type
from shellgate.store.repositories.rows import delete_row

GatewaySettings = internal_pb2.GatewaySettings
SandboxSettings = internal_pb2.SandboxSettings
Settings = TypeVar("Settings", GatewaySettings, SandboxSettings)

GATEWAY_SETTINGS_TYPE = "gateway_settings"
SANDBOX_SETTINGS_TYPE = "sandbox_settings"
GATEWAY_SETTINGS_ID = "gateway-settings"

register_object_type(GatewaySettings.DESCRIPTOR.full_name, GATEWAY_SETTINGS_TYPE)
register_object_type(SandboxSettings.DESCRIPTOR.full_name, SANDBOX_SETTINGS_TYPE)


def sandbox_settings_id(sandbox_id: str) -> str:
    """Keyed by the sandbox id, never its name: a new sandbox reusing a deleted one's name
    must not inherit its settings."""
    return f"sandbox-settings-{sandbox_id}"


class SettingsRepository:
    def __init__(self, store: Store) -> None:
        self.store = store

    @staticmethod
    def blank_gateway() -> GatewaySettings:
        blank = GatewaySettings()
        blank.metadata.id = GATEWAY_SETTINGS_ID
        blank.metadata.name = "global"
        return blank

    @staticmethod
    def blank_sandbox(sandbox_id: str, workspace: str) -> SandboxSettings:
        blank = SandboxSettings(sandbox_id=sandbox_id)
        blank.metadata.id = sandbox_settings_id(sandbox_id)
        blank.metadata.workspace = workspace
        return blank

    async def load_gateway(self) -> GatewaySettings | None:
        return await self.store.get_message(GatewaySettings, GATEWAY_SETTINGS_ID)

    async def load_sandbox(self, sandbox_id: str) -> SandboxSettings | None:
        return await self.store.get_message(SandboxSettings, sandbox_settings_id(sandbox_id))

    async def update(self, blank: Settings, mutate: Callable[[Settings], Settings]) -> Settings:
        """Apply ``mutate`` to the row ``blank`` names, creating it on first use.

        ``update_message_cas`` re-reads and re-applies on a conflict; a lost create race
        sends the outer loop back to that read. Only the outer loop's lost creates are its
        own; the CAS reports its attempts itself, so the outer loop reports nothing more.
        """
        message_type: Any = type(blank)
        row_id = blank.metadata.id

        async def attempt() -> Settings:
            try:
                outcome = await self.store.update_message_cas(message_type, row_id, mutate)
            except NotFound:
                empty: Settings = message_type()
                empty.CopyFrom(blank)
                candidate = mutate(empty)
                if candidate == blank:
                    return candidate
                return await self.store.create_message(candidate)
            written: Settings = outcome.message
            return written

        return await self.store.retry_on_conflict(
            attempt, object_type=None, retriable=(UniqueViolation,)
        )

    async def remove_owned(self, sandbox_id: str) -> int:
        """Remove a deleted sandbox's settings row (version-bound); the number removed."""
        record = await self.store.get(SANDBOX_SETTINGS_TYPE, sandbox_settings_id(sandbox_id))
        return int(record is not None and await delete_row(self.store, record))
