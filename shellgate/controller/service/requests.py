"""What several handlers read the same way: workspaces, named objects, sandboxes.

Handler modules do not import each other; what more than one of them needs lives here.
"""

from __future__ import annotations

import secrets
import string
import uuid
from typing import Any, TypeVar

from google.protobuf.message import Message

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.controller.auth.authorize import caller_of
from shellgate.controller.auth.principal import current_principal
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import not_found
from shellgate.reconcilers.access import may_create_workspace_implicitly
from shellgate.reconcilers.errors import FailedPrecondition, InvalidArgument
from shellgate.reconcilers.policy import LOADED, new_revision, policy_hash, revision_status
from shellgate.reconcilers.validation import (
    effective_page_size,
    require_valid,
    validate_object_name,
    validate_workspace,
)
from shellgate.store import DEFAULT_WORKSPACE, object_type_of
from shellgate.store.repositories import StoredPolicyRevision, VersionTaken

M = TypeVar("M", bound=Message)
Sandbox = openshell_pb2.Sandbox
DELETING = openshell_pb2.SANDBOX_PHASE_DELETING


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


def one_listed_workspace(selector: datamodel_pb2.WorkspaceSelector, rpc: str) -> str:
    """For list RPCs that page one workspace only: ``all_workspaces`` is refused rather than
    quietly narrowed to "default", so a caller never takes a partial list for the whole."""
    if selector.HasField("all_workspaces"):
        raise InvalidArgument.single(
            "workspace_scope.all_workspaces", f"{rpc} lists one workspace at a time"
        )
    return single_workspace(selector)


def _creates_missing_workspace() -> bool:
    caller = caller_of(current_principal())
    return caller is not None and may_create_workspace_implicitly(caller)


async def admit_into_workspace(gw: Gateway, workspace: str) -> None:
    """Before a sandbox or provider is written into ``workspace``: it must exist and not be
    being deleted, or be missing when a platform admin creates (shellgate took any valid
    name as a workspace before workspaces were objects)."""
    await gw.repos.workspaces.admit(workspace, create_missing=_creates_missing_workspace())


async def confirm_in_workspace(gw: Gateway, workspace: str) -> None:
    """After the row is written: the workspace fence (the workspace is still ACTIVE; a
    platform admin's missing workspace is made now). The caller takes its row back out when
    this raises."""
    await gw.repos.workspaces.confirm(workspace, create_missing=_creates_missing_workspace())


def delete_target(
    request: openshell_pb2.DeleteSandboxRequest | openshell_pb2.DeleteProviderRequest,
) -> tuple[str, str]:
    """The name and workspace a delete names; the name is required (no name, no target)."""
    workspace = single_workspace(request.workspace_scope)
    if not request.name:
        raise InvalidArgument.single("name", "name is required")
    return request.name, workspace


def page_query(
    request: openshell_pb2.ListSandboxesRequest
    | openshell_pb2.ListProvidersRequest
    | openshell_pb2.ListSandboxTemplatesRequest,
) -> dict[str, Any]:
    """A list request's workspace, selector and page, as a repository's ``list_page`` takes
    them (the page size clamped the one way every list uses)."""
    return {
        "workspace": workspace_of(request.workspace_scope),
        "selector": request.label_selector,
        "limit": effective_page_size(request.page_size),
        "page_token": request.page_token,
    }


def generated_name(prefix: str) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return f"{prefix}-" + "".join(secrets.choice(alphabet) for _ in range(8))


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


async def find_sandbox(gw: Gateway, name: str, workspace: str) -> Sandbox:
    return await find_named(gw, Sandbox, name, workspace)


async def find_live_sandbox(gw: Gateway, name: str, workspace: str) -> Sandbox:
    """The named sandbox, refusing one that is being deleted: its configuration rows are
    being removed, so writing new ones would only leave orphans behind."""
    sandbox = await find_sandbox(gw, name, workspace)
    if sandbox.status.phase == DELETING:
        raise FailedPrecondition(
            f"sandbox {name!r} is being deleted", openshell_pb2.SandboxPhase.Name(DELETING)
        )
    return sandbox


async def effective_revision(gw: Gateway, sandbox: Sandbox) -> StoredPolicyRevision | None:
    """The latest revision; the first read of a sandbox created with a policy records that
    policy as revision 1, loaded (the reference's lazy backfill). Idempotent: a racing reader
    that inserted version 1 first makes our insert fail on the version index, and we read."""
    latest = await gw.repos.revisions.latest(sandbox.metadata.id)
    if latest is not None or not sandbox.spec.HasField("policy"):
        return latest
    if sandbox.status.phase == DELETING:
        return None  # its rows are being removed: recording one now would leave an orphan
    policy = sandbox.spec.policy
    first = new_revision(
        revision_id=str(uuid.uuid4()),
        sandbox_id=sandbox.metadata.id,
        workspace=sandbox.metadata.workspace,
        version=1,
        policy=policy,
        digest=policy_hash(policy),
        now_ms=gw.clock_ms(),
        status=LOADED,
    )
    try:
        return await gw.repos.revisions.insert_next_version(
            sandbox.metadata.id, first, revision_status(first)
        )
    except VersionTaken:
        return await gw.repos.revisions.latest(sandbox.metadata.id)
