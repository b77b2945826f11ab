"""What every handler reads from a request the same way: workspaces and named objects."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message

from shellgate.api import datamodel_pb2
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import not_found
from shellgate.reconcilers.validation import (
    require_valid,
    validate_object_name,
    validate_workspace,
)
from shellgate.store import DEFAULT_WORKSPACE, object_type_of

M = TypeVar("M", bound=Message)


def workspace_of(selector: datamodel_pb2.WorkspaceSelector) -> str | None:
    """The workspace a request names: empty means "default", ``all_workspaces`` means None.

    Every RPC reads its workspace here, so the one workspace-name rule applies to all of them.
    """
    if selector.HasField("all_workspaces"):
        return None
    require_valid(validate_workspace(selector.workspace))
    return selector.workspace or DEFAULT_WORKSPACE


def single_workspace(selector: datamodel_pb2.WorkspaceSelector) -> str:
    """For requests about one object: ``all_workspaces`` falls back to "default"."""
    return workspace_of(selector) or DEFAULT_WORKSPACE


async def find_named(
    gw: Gateway, message_type: type[M], name: str, workspace: str, field: str = "name"
) -> M:
    """The object called ``name`` in ``workspace``: INVALID_ARGUMENT for a missing or
    malformed name (the rule creates apply), NOT_FOUND when there is none."""
    require_valid(validate_object_name(name, field))
    found = await gw.store.get_message_by_name(message_type, name, workspace)
    if found is None:
        raise not_found(object_type_of(message_type), name)
    return found
