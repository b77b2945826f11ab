"""Guard removals shared by the fenced-delete race companions (providers, templates, ...).

Each fenced repository has a ``fence(name, workspace)`` the referencing write calls after its
own write, and a ``_delete_at_version_read(record)`` its delete uses after scanning for
references. A companion test removes one of them and shows its race check then fails.
"""

from __future__ import annotations

from typing import Any

import pytest

from shellgate.store import ObjectRecord


def remove_fence(repository: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """No fence at all: nothing checks the referenced row after the reference is written."""

    async def no_fence(_name: str, _workspace: str) -> None:
        return None

    monkeypatch.setattr(repository, "fence", no_fence)


def fence_checks_existence_only(
    repository: Any, object_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fence checks that the referenced row exists but no longer moves its version."""

    async def exists_only(name: str, workspace: str) -> bool:
        return await repository.store.get_by_name(object_type, name, workspace) is not None

    monkeypatch.setattr(repository, "_write_fence", exists_only)


def delete_at_current_version(
    repository: Any, object_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delete uses whatever version the row has now, not the one it read before
    scanning for references."""

    async def delete_current(record: ObjectRecord) -> bool:
        fresh = await repository.store.get(object_type, record.id)
        if fresh is None:
            return False
        return bool(await repository.store.delete_if(object_type, fresh.id, fresh.resource_version))

    monkeypatch.setattr(repository, "_delete_at_version_read", delete_current)
