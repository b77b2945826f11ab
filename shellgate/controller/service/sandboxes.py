"""Sandbox RPCs: create, get, list, delete, stop, start, attach and detach providers.

Each handler validates the request, then reads, passes one reconciler's mutation to the
sandbox repository, and talks to the compute driver. Every write names its condition:
creates are ``MUST_CREATE``, updates go through ``update_message_cas``, deletes are bound to
a version.

Cross-object guard (docs/api.md): a sandbox may only reference
providers that exist. The sandbox repository writes the reference, then fences the provider
(re-writes it at its version), and takes the reference back out if the fence fails; the
provider repository's DeleteProvider deletes only at the version it read before scanning for
references. The handlers here only check the request and call those protocols.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.base import DriverError, DriverNotOwner
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import not_found
from shellgate.controller.service.names import NAME_ATTEMPTS, readable_name
from shellgate.controller.service.requests import (
    admit_into_workspace,
    confirm_in_workspace,
    delete_target,
    find_sandbox,
    page_query,
    single_workspace,
)
from shellgate.reconcilers import sandbox as sandbox_rules
from shellgate.reconcilers.errors import InvalidArgument
from shellgate.reconcilers.ownership import record_owner
from shellgate.reconcilers.phase import STARTING, STOPPING
from shellgate.reconcilers.policy import require_acceptable_policy
from shellgate.reconcilers.templates import merge_over_template, record_provenance
from shellgate.reconcilers.validation import (
    require_valid,
    validate_object_name,
    validate_sandbox_for_create,
)
from shellgate.store import NotFound, StoreError, UniqueViolation
from shellgate.store.repositories import SANDBOX_TYPE

log = logging.getLogger(__name__)

Sandbox = openshell_pb2.Sandbox


def build_sandbox(request: openshell_pb2.CreateSandboxRequest) -> Sandbox:
    """The candidate row; ``created_time`` comes later, from the database's insert."""
    if not request.HasField("spec"):
        raise InvalidArgument.single("spec", "spec is required")
    sandbox = Sandbox()
    meta = sandbox.metadata
    meta.id = str(uuid.uuid4())
    meta.name = request.name or readable_name(0)
    meta.workspace = single_workspace(request.workspace_scope)
    meta.labels.update(request.labels)
    meta.annotations.update(request.annotations)
    sandbox.spec.CopyFrom(request.spec)
    sandbox.status.phase = openshell_pb2.SANDBOX_PHASE_PROVISIONING
    require_valid(validate_sandbox_for_create(sandbox))
    require_safe_spec_policy(sandbox.spec)
    return sandbox


def require_safe_spec_policy(spec: openshell_pb2.SandboxSpec) -> None:
    """The checks UpdateConfig applies to a policy, applied at create too: a sandbox must not
    start with a policy it could never be given later (root, ``..``, a read-write ``/``,
    endpoints whose metadata the proxy could not choose between)."""
    if spec.HasField("policy"):
        require_acceptable_policy(spec.policy, "spec.policy")


async def create_sandbox(
    gw: Gateway, request: openshell_pb2.CreateSandboxRequest
) -> openshell_pb2.SandboxResponse:
    """Validate → admit into the workspace → MUST_CREATE → confirm the workspace → fence
    providers → driver create; undo the row on failure."""
    candidate = build_sandbox(request)
    template = await _apply_template(gw, candidate, request.workload_template)
    if gw.driver.routes_by_owner:
        record_owner(candidate, gw.replica_id)  # the row, not a file, says who runs it
    workspace = candidate.metadata.workspace
    providers = list(dict.fromkeys(candidate.spec.providers))
    await gw.repos.providers.require(providers, workspace)
    await admit_into_workspace(gw, workspace)
    created = await _insert(gw, candidate, name_generated=not request.name)
    try:
        await confirm_in_workspace(gw, workspace)  # the workspace fence, after the write
        await gw.repos.sandboxes.fence_providers(created.metadata.id, providers, workspace)
        if template is not None:
            await gw.repos.sandboxes.fence_template(created.metadata.id, template, workspace)
        await gw.driver.create_sandbox(created)
    except BaseException:
        await _undo_create(gw, created)
        raise
    log.info("created sandbox %s (%s) in %s", created.metadata.name, created.metadata.id, workspace)
    return openshell_pb2.SandboxResponse(sandbox=created)


async def _apply_template(gw: Gateway, candidate: Sandbox, name: str) -> str | None:
    """Lay the candidate's spec over the named template and record which template (and which
    version of it) it came from; the merged sandbox passes the create checks again. Returns
    the template's name, or None when the request names none."""
    if not name:
        return None
    require_valid(validate_object_name(name, "workload_template"))
    template = await gw.repos.templates.require(name, candidate.metadata.workspace)
    candidate.spec.CopyFrom(merge_over_template(candidate.spec, template))
    record_provenance(candidate, template)
    require_valid(validate_sandbox_for_create(candidate))
    return name


async def _insert(gw: Gateway, candidate: Sandbox, *, name_generated: bool) -> Sandbox:
    """MUST_CREATE the row. A name the caller chose that is taken is ALREADY_EXISTS; a
    generated one that is taken is replaced by a suffixed one and tried again."""
    for attempt in range(1, NAME_ATTEMPTS + 1):
        try:
            return await gw.repos.sandboxes.create(candidate)
        except UniqueViolation:
            if not name_generated or attempt == NAME_ATTEMPTS:
                raise
            candidate.metadata.name = readable_name(attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


async def get_sandbox(
    gw: Gateway, request: openshell_pb2.GetSandboxRequest
) -> openshell_pb2.SandboxResponse:
    found = await find_sandbox(gw, request.name, single_workspace(request.workspace_scope))
    return openshell_pb2.SandboxResponse(sandbox=found)


async def _undo_create(gw: Gateway, created: Sandbox) -> None:
    """Undo a create whose driver call or provider fence failed: the driver's resources
    first, then the row (version-bound). The original error is what the client sees; what
    cannot be undone now is left to the sweep."""
    try:
        await gw.driver.delete_sandbox(created.metadata.id)
    except DriverError as exc:
        log.warning("undo create of %s: driver delete failed: %s", created.metadata.id, exc)
    try:
        await gw.remove_sandbox(created.metadata.id)
    except StoreError as exc:
        log.warning("undo create of %s: row removal failed: %s", created.metadata.id, exc)


async def list_sandboxes(
    gw: Gateway, request: openshell_pb2.ListSandboxesRequest
) -> openshell_pb2.ListSandboxesResponse:
    sandboxes, token = await gw.repos.sandboxes.list_page(**page_query(request))
    return openshell_pb2.ListSandboxesResponse(sandboxes=sandboxes, next_page_token=token)


async def delete_sandbox(
    gw: Gateway, request: openshell_pb2.DeleteSandboxRequest
) -> openshell_pb2.DeleteSandboxResponse:
    """Move the row to DELETING by CAS, ask the driver; the row goes when the driver confirms."""
    name, workspace = delete_target(request)
    found = await gw.repos.sandboxes.find(name, workspace)
    try:
        if found is None:
            raise NotFound(SANDBOX_TYPE, name)
        sandbox_id = found.metadata.id
        deleting = (
            await gw.repos.sandboxes.update(sandbox_id, sandbox_rules.begin_delete())
        ).message
    except NotFound:  # absent, or removed by a concurrent delete since our read
        if request.allow_missing:
            return openshell_pb2.DeleteSandboxResponse(
                outcome=openshell_pb2.DELETION_OUTCOME_ALREADY_ABSENT
            )
        raise not_found(SANDBOX_TYPE, name) from None
    existed = await _ask_driver_to_delete(gw, deleting)
    if existed:
        outcome = openshell_pb2.DELETION_OUTCOME_ACCEPTED
    else:
        await gw.remove_sandbox_at(sandbox_id, deleting.metadata.resource_version)
        outcome = openshell_pb2.DELETION_OUTCOME_COMPLETED
    log.info("deleting sandbox %s (%s)", name, sandbox_id)
    return openshell_pb2.DeleteSandboxResponse(outcome=outcome, sandbox_id=sandbox_id)


async def _ask_driver_to_delete(gw: Gateway, deleting: Sandbox) -> bool:
    """Ask this replica's driver, unless the row names another replica as the owner: that
    replica sees DELETING through the change feed and deletes (our driver would answer
    "nothing here" and we would remove the row while the owner's process still runs)."""
    if gw.owned_elsewhere(deleting):
        return True
    try:
        return await gw.driver.delete_sandbox(deleting.metadata.id)
    except DriverNotOwner:
        return True  # the owning replica sees DELETING in the store and deletes it


async def stop_sandbox(
    gw: Gateway, request: openshell_pb2.StopSandboxRequest
) -> openshell_pb2.SandboxResponse:
    """Answer once the row is STOPPING (or already STOPPED)."""
    return await _begin_transition(
        gw, request, sandbox_rules.begin_stop(), STOPPING, gw.driver.stop_sandbox
    )


async def start_sandbox(
    gw: Gateway, request: openshell_pb2.StartSandboxRequest
) -> openshell_pb2.SandboxResponse:
    """Answer once the row is STARTING, never while it still reads STOPPED."""
    return await _begin_transition(
        gw, request, sandbox_rules.begin_start(), STARTING, gw.driver.start_sandbox
    )


async def _begin_transition(
    gw: Gateway,
    request: openshell_pb2.StopSandboxRequest | openshell_pb2.StartSandboxRequest,
    mutation: sandbox_rules.Mutation,
    phase: openshell_pb2.SandboxPhase,
    tell_driver: Callable[[str], Awaitable[None]],
) -> openshell_pb2.SandboxResponse:
    """Write the transition's phase by CAS; tell the driver only when this write entered it
    (a row already past it, e.g. STOPPED for a stop, needs nothing more)."""
    found = await find_sandbox(gw, request.name, single_workspace(request.workspace_scope))
    updated = (await gw.repos.sandboxes.update(found.metadata.id, mutation)).message
    if updated.status.phase == phase and not gw.owned_elsewhere(updated):
        with contextlib.suppress(DriverNotOwner):  # the owner follows the store
            await tell_driver(updated.metadata.id)
    return openshell_pb2.SandboxResponse(sandbox=updated)


async def attach_sandbox_provider(
    gw: Gateway, request: openshell_pb2.AttachSandboxProviderRequest
) -> openshell_pb2.AttachSandboxProviderResponse:
    """Check the provider exists, then the repository's attach protocol: the sandbox write,
    the provider fence, and the undo of the write when the fence fails."""
    workspace = single_workspace(request.workspace_scope)
    mutation = sandbox_rules.attach_provider(request.provider)
    await gw.repos.providers.require([request.provider], workspace)
    found = await find_sandbox(gw, request.sandbox, workspace)
    outcome = await gw.repos.sandboxes.attach(
        found.metadata.id,
        request.provider,
        workspace,
        mutation,
        sandbox_rules.detach_provider(request.provider),
        request.expected_resource_version,
    )
    return openshell_pb2.AttachSandboxProviderResponse(
        sandbox=outcome.message, attached=outcome.written
    )


async def detach_sandbox_provider(
    gw: Gateway, request: openshell_pb2.DetachSandboxProviderRequest
) -> openshell_pb2.DetachSandboxProviderResponse:
    mutation = sandbox_rules.detach_provider(request.provider)
    found = await find_sandbox(gw, request.sandbox, single_workspace(request.workspace_scope))
    outcome = await gw.repos.sandboxes.update(
        found.metadata.id, mutation, request.expected_resource_version
    )
    return openshell_pb2.DetachSandboxProviderResponse(
        sandbox=outcome.message, detached=outcome.written
    )
