"""Sandbox RPCs: create, get, list, delete, stop, start, attach and detach providers.

Each handler validates the request, then reads, calls one reconciler through the store, and
talks to the compute driver. Every write names its condition: creates are ``MUST_CREATE``,
updates go through ``update_message_cas``, deletes are bound to a version.

Cross-object guard (architecture decision 11, docs/api.md): a sandbox may only reference
providers that exist. After a sandbox row starts referencing a provider, the handler bumps the
provider's version by CAS ("fences" it). DeleteProvider reads the provider's version, scans the
sandboxes, and deletes with ``delete_if`` on that version, so an attach that landed after the
delete's read makes the delete fail and re-check, and an attach that finds the provider gone
undoes itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import string
import uuid

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.base import DriverError, DriverNotOwner
from shellgate.controller.gateway import Gateway
from shellgate.controller.removal import remove_sandbox, remove_sandbox_row
from shellgate.controller.service.errors import not_found
from shellgate.controller.service.requests import find_named, single_workspace, workspace_of
from shellgate.reconcilers import sandbox as sandbox_rules
from shellgate.reconcilers.errors import FailedPrecondition, InvalidArgument
from shellgate.reconcilers.validation import (
    effective_page_size,
    require_valid,
    validate_sandbox_for_create,
)
from shellgate.store import Conflict, NotFound, StoreError, WriteCondition

log = logging.getLogger(__name__)

Sandbox = openshell_pb2.Sandbox
FENCE_ATTEMPTS = 5


def generated_name(prefix: str) -> str:
    alphabet = string.ascii_lowercase + string.digits
    return f"{prefix}-" + "".join(secrets.choice(alphabet) for _ in range(8))


async def find_sandbox(gw: Gateway, name: str, workspace: str) -> Sandbox:
    return await find_named(gw, Sandbox, name, workspace)


async def fence_provider(gw: Gateway, name: str, workspace: str) -> None:
    """Bump the provider's version by CAS, proving it still exists after our reference."""
    for attempt in range(1, FENCE_ATTEMPTS + 1):
        if attempt > 1:
            await gw.store.pause_before_retry(attempt - 1)
        record = await gw.store.get_by_name("provider", name, workspace)
        if record is None:
            raise FailedPrecondition(f"provider {name!r} not found", "PROVIDER_MISSING")
        try:
            await gw.store.put_if(
                "provider",
                record.id,
                record.name,
                record.payload,
                record.labels,
                WriteCondition.match(record.resource_version),
                record.workspace,
            )
            return
        except (NotFound, Conflict):
            continue  # deleted or touched meanwhile: read again
    raise Conflict(None)


async def require_providers(gw: Gateway, names: list[str], workspace: str) -> None:
    for name in names:
        if await gw.store.get_by_name("provider", name, workspace) is None:
            raise FailedPrecondition(f"provider {name!r} not found", "PROVIDER_MISSING")


def build_sandbox(request: openshell_pb2.CreateSandboxRequest) -> Sandbox:
    """The candidate row; ``created_time`` comes later, from the database's insert."""
    if not request.HasField("spec"):
        raise InvalidArgument.single("spec", "spec is required")
    sandbox = Sandbox()
    meta = sandbox.metadata
    meta.id = str(uuid.uuid4())
    meta.name = request.name or generated_name("sandbox")
    meta.workspace = single_workspace(request.workspace_scope)
    meta.labels.update(request.labels)
    meta.annotations.update(request.annotations)
    sandbox.spec.CopyFrom(request.spec)
    sandbox.status.phase = openshell_pb2.SANDBOX_PHASE_PROVISIONING
    require_valid(validate_sandbox_for_create(sandbox))
    return sandbox


async def create_sandbox(gw: Gateway, request: openshell_pb2.CreateSandboxRequest) -> Sandbox:
    """Validate → MUST_CREATE → fence providers → driver create; undo the row on failure."""
    candidate = build_sandbox(request)
    workspace = candidate.metadata.workspace
    providers = list(dict.fromkeys(candidate.spec.providers))
    await require_providers(gw, providers, workspace)
    created = await gw.store.create_message(candidate)
    try:
        for name in providers:
            await fence_provider(gw, name, workspace)
        await gw.driver.create_sandbox(created)
    except BaseException:
        await _undo_create(gw, created)
        raise
    log.info("created sandbox %s (%s) in %s", created.metadata.name, created.metadata.id, workspace)
    return created


async def _undo_create(gw: Gateway, created: Sandbox) -> None:
    """Undo a create whose driver call or provider fence failed: the driver's resources
    first, then the row (version-bound). The original error is what the client sees; what
    cannot be undone now is left to the sweep."""
    try:
        await gw.driver.delete_sandbox(created.metadata.id)
    except DriverError as exc:
        log.warning("undo create of %s: driver delete failed: %s", created.metadata.id, exc)
    try:
        await remove_sandbox(gw, created.metadata.id)
    except StoreError as exc:
        log.warning("undo create of %s: row removal failed: %s", created.metadata.id, exc)


async def list_sandboxes(
    gw: Gateway, request: openshell_pb2.ListSandboxesRequest
) -> openshell_pb2.ListSandboxesResponse:
    sandboxes, token = await gw.store.list_messages(
        Sandbox,
        workspace=workspace_of(request.workspace_scope),
        selector=request.label_selector,
        limit=effective_page_size(request.page_size),
        page_token=request.page_token,
    )
    return openshell_pb2.ListSandboxesResponse(sandboxes=sandboxes, next_page_token=token)


async def delete_sandbox(
    gw: Gateway, request: openshell_pb2.DeleteSandboxRequest
) -> openshell_pb2.DeleteSandboxResponse:
    """Move the row to DELETING by CAS, ask the driver; the row goes when the driver confirms."""
    workspace = single_workspace(request.workspace_scope)
    if not request.name:
        raise InvalidArgument.single("name", "name is required")
    found = await gw.store.get_message_by_name(Sandbox, request.name, workspace)
    try:
        if found is None:
            raise NotFound("sandbox", request.name)
        sandbox_id = found.metadata.id
        deleting = (
            await gw.store.update_message_cas(Sandbox, sandbox_id, sandbox_rules.begin_delete())
        ).message
    except NotFound:  # absent, or removed by a concurrent delete since our read
        if request.allow_missing:
            return openshell_pb2.DeleteSandboxResponse(
                outcome=openshell_pb2.DELETION_OUTCOME_ALREADY_ABSENT
            )
        raise not_found("sandbox", request.name) from None
    try:
        existed = await gw.driver.delete_sandbox(sandbox_id)
    except DriverNotOwner:
        existed = True  # the owning replica sees DELETING in the store and deletes it
    if existed:
        outcome = openshell_pb2.DELETION_OUTCOME_ACCEPTED
    else:
        await remove_sandbox_row(gw, sandbox_id, deleting.metadata.resource_version, request.name)
        outcome = openshell_pb2.DELETION_OUTCOME_COMPLETED
    log.info("deleting sandbox %s (%s)", request.name, sandbox_id)
    return openshell_pb2.DeleteSandboxResponse(outcome=outcome, sandbox_id=sandbox_id)


async def stop_sandbox(gw: Gateway, request: openshell_pb2.StopSandboxRequest) -> Sandbox:
    """Answer once the row is STOPPING (or already STOPPED)."""
    found = await find_sandbox(gw, request.name, single_workspace(request.workspace_scope))
    updated = (
        await gw.store.update_message_cas(Sandbox, found.metadata.id, sandbox_rules.begin_stop())
    ).message
    if updated.status.phase == openshell_pb2.SANDBOX_PHASE_STOPPING:
        with contextlib.suppress(DriverNotOwner):  # the owner follows the store
            await gw.driver.stop_sandbox(updated.metadata.id)
    return updated


async def start_sandbox(gw: Gateway, request: openshell_pb2.StartSandboxRequest) -> Sandbox:
    """Answer once the row is STARTING, never while it still reads STOPPED."""
    found = await find_sandbox(gw, request.name, single_workspace(request.workspace_scope))
    updated = (
        await gw.store.update_message_cas(Sandbox, found.metadata.id, sandbox_rules.begin_start())
    ).message
    if updated.status.phase == openshell_pb2.SANDBOX_PHASE_STARTING:
        with contextlib.suppress(DriverNotOwner):  # the owner follows the store
            await gw.driver.start_sandbox(updated.metadata.id)
    return updated


async def attach_provider(
    gw: Gateway, request: openshell_pb2.AttachSandboxProviderRequest
) -> openshell_pb2.AttachSandboxProviderResponse:
    mutation = sandbox_rules.attach_provider(request.provider)
    workspace = single_workspace(request.workspace_scope)
    await require_providers(gw, [request.provider], workspace)
    found = await find_sandbox(gw, request.sandbox, workspace)
    outcome = await gw.store.update_message_cas(
        Sandbox, found.metadata.id, mutation, request.expected_resource_version
    )
    if outcome.written:
        try:
            await fence_provider(gw, request.provider, workspace)
        except BaseException:
            # Unfenced, the reference could outlive a concurrent DeleteProvider: take it back
            # out whatever the failure (provider gone, store down, lost races, cancellation),
            # so an error answer always means nothing was attached.
            await asyncio.shield(_undo_attach(gw, found.metadata.id, request.provider))
            raise
    return openshell_pb2.AttachSandboxProviderResponse(
        sandbox=outcome.message, attached=outcome.written
    )


async def _undo_attach(gw: Gateway, sandbox_id: str, provider: str) -> None:
    try:
        await gw.store.update_message_cas(
            Sandbox, sandbox_id, sandbox_rules.detach_provider(provider)
        )
    except StoreError as exc:  # the sandbox went away, or the store did; the sweep cannot help
        log.error("could not undo the attach of %s to sandbox %s: %s", provider, sandbox_id, exc)


async def detach_provider(
    gw: Gateway, request: openshell_pb2.DetachSandboxProviderRequest
) -> openshell_pb2.DetachSandboxProviderResponse:
    mutation = sandbox_rules.detach_provider(request.provider)
    found = await find_sandbox(gw, request.sandbox, single_workspace(request.workspace_scope))
    outcome = await gw.store.update_message_cas(
        Sandbox, found.metadata.id, mutation, request.expected_resource_version
    )
    return openshell_pb2.DetachSandboxProviderResponse(
        sandbox=outcome.message, detached=outcome.written
    )
