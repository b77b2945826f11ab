"""What every handler reads from a request the same way: workspaces and named objects."""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import Message

from shellgate.api import datamodel_pb2
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import not_found
from shellgate.reconcilers.errors import InvalidArgument
from shellgate.store import DEFAULT_WORKSPACE, object_type_of

M = TypeVar("M", bound=Message)


def workspace_of(selector: datamodel_pb2.WorkspaceSelector) -> str | None:
    """The workspace a request names: empty means "default", ``all_workspaces`` means None."""
    if selector.HasField("all_workspaces"):
        return None
    return selector.workspace or DEFAULT_WORKSPACE


def single_workspace(selector: datamodel_pb2.WorkspaceSelector) -> str:
    """For requests about one object: ``all_workspaces`` falls back to "default"."""
    return workspace_of(selector) or DEFAULT_WORKSPACE


async def find_named(gw: Gateway, message_type: type[M], name: str, workspace: str) -> M:
    """The object called ``name`` in ``workspace``: INVALID_ARGUMENT without a name,
    NOT_FOUND when there is none."""
    if not name:
        raise InvalidArgument.single("name", "name is required")
    found = await gw.store.get_message_by_name(message_type, name, workspace)
    if found is None:
        raise not_found(object_type_of(message_type), name)
    return found
