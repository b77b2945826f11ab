"""Policy RPCs: UpdateConfig's policy paths, ListSandboxPolicies, GetSandboxPolicyStatus,
ReportPolicyStatus.

A sandbox's policy is its latest revision (scope = sandbox id); a global policy, when one is
set, overrides every sandbox's. Every new revision goes through
``config_store.commit_revision`` (insert n+1, the version index arbitrates, rebuild and
retry on a lost race); every status change through a state-checked CAS.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence

from shellgate.api import openshell_pb2, sandbox_pb2
from shellgate.controller.config_store import (
    REVISION_TYPE,
    GatewaySettings,
    StoredPolicyRevision,
    blank_gateway_settings,
    commit_revision,
    insert_scoped,
    latest_revision,
    load_gateway_settings,
    revision_at,
    supersede_older,
    update_settings,
)
from shellgate.controller.draft_effects import policy_base
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import not_found
from shellgate.controller.service.requests import single_workspace
from shellgate.controller.service.sandboxes import find_sandbox
from shellgate.reconcilers.errors import FailedPrecondition, InvalidArgument
from shellgate.reconcilers.policy import (
    ACTIVE_WORDS,
    GLOBAL_SCOPE,
    LOADED,
    SUPERSEDED,
    backfill_policy,
    new_revision,
    policy_hash,
    raise_current_version,
    report_status,
    require_valid_policy,
    revision_status,
    validate_static_fields,
    with_default_identity,
)
from shellgate.reconcilers.policy_merge import MergeOperation, apply_merge_operations
from shellgate.reconcilers.settings import GlobalPolicyChange, is_global, require_no_global_policy
from shellgate.reconcilers.validation import effective_page_size
from shellgate.store import NotFound, UniqueViolation, decode

Sandbox = openshell_pb2.Sandbox
SandboxPolicy = sandbox_pb2.SandboxPolicy
UpdateConfigResponse = openshell_pb2.UpdateConfigResponse
DELETING = openshell_pb2.SANDBOX_PHASE_DELETING


async def find_live_sandbox(gw: Gateway, name: str, workspace: str) -> Sandbox:
    """The named sandbox, refusing one that is being deleted: its configuration rows are
    being removed, so writing new ones would only leave orphans behind."""
    sandbox = await find_sandbox(gw, name, workspace)
    if sandbox.status.phase == DELETING:
        raise FailedPrecondition(
            f"sandbox {name!r} is being deleted", openshell_pb2.SandboxPhase.Name(DELETING)
        )
    return sandbox


def _response(revision: StoredPolicyRevision, settings_revision: int = 0) -> UpdateConfigResponse:
    return UpdateConfigResponse(
        version=revision.revision.version,
        policy_hash=revision.revision.policy_hash,
        settings_revision=settings_revision,
    )


# --- sandbox scope ----------------------------------------------------------------------------


async def set_sandbox_policy(
    gw: Gateway, sandbox: Sandbox, policy: SandboxPolicy, expected_version: int
) -> UpdateConfigResponse:
    """A full policy for one sandbox: backfill or static-field check on the sandbox row (by
    CAS, with the client's expected_resource_version), then a new revision unless unchanged.
    """
    require_no_global_policy(await load_gateway_settings(gw))
    candidate = with_default_identity(policy)
    require_valid_policy(candidate)
    await gw.store.update_message_cas(
        Sandbox, sandbox.metadata.id, backfill_policy(candidate), expected_version
    )
    revision, _ = await commit_revision(
        gw, sandbox.metadata.id, sandbox.metadata.workspace, lambda _latest: candidate
    )
    return _response(revision)


async def merge_sandbox_policy(
    gw: Gateway, sandbox: Sandbox, operations: Sequence[MergeOperation]
) -> UpdateConfigResponse:
    """Merge operations, re-applied to whatever revision is latest on every attempt (and
    validated there, before the insert: a target may exist only in the latest revision)."""
    require_no_global_policy(await load_gateway_settings(gw))
    baseline = sandbox.spec.policy if sandbox.spec.HasField("policy") else None

    def build(latest: StoredPolicyRevision | None) -> SandboxPolicy:
        candidate = apply_merge_operations(policy_base(sandbox, latest), operations).policy
        if baseline is not None:
            validate_static_fields(baseline, candidate)
        return candidate

    revision, _ = await commit_revision(gw, sandbox.metadata.id, sandbox.metadata.workspace, build)
    return _response(revision)


async def effective_revision(gw: Gateway, sandbox: Sandbox) -> StoredPolicyRevision | None:
    """The latest revision; the first read of a sandbox created with a policy records that
    policy as revision 1, loaded (the reference's lazy backfill). Idempotent: a racing reader
    that inserted version 1 first makes our insert fail on the version index, and we read."""
    latest = await latest_revision(gw, sandbox.metadata.id)
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
        return await insert_scoped(
            gw, REVISION_TYPE, first, scope=sandbox.metadata.id, status="loaded", version=1
        )
    except UniqueViolation:
        return await latest_revision(gw, sandbox.metadata.id)


# --- global scope -----------------------------------------------------------------------------


async def set_global_policy(gw: Gateway, policy: SandboxPolicy) -> UpdateConfigResponse:
    """A global policy: revision n+1 in scope ``__global__`` (loaded at once: no sandbox
    reports on it), then the gateway settings point at it by CAS. A crash in between is
    repaired by repeating the request: the unchanged hash finds the revision, and the
    pointer is written then."""
    candidate = with_default_identity(policy)
    require_valid_policy(candidate)
    revision, _ = await commit_revision(
        gw,
        GLOBAL_SCOPE,
        "",
        lambda _latest: candidate,
        status=LOADED,
        supersedes=ACTIVE_WORDS,
        reusable=lambda latest: latest.revision.status == LOADED,
    )
    change = GlobalPolicyChange(candidate, revision.revision.version, revision.revision.policy_hash)
    settings = await update_settings(gw, GatewaySettings, blank_gateway_settings(), change)
    return _response(revision, settings.revision)


async def clear_global_policy(gw: Gateway) -> UpdateConfigResponse:
    """Delete the global policy (``setting_key=policy, delete_setting``); sandboxes return
    to their own policies, and the global revisions are superseded."""
    change = GlobalPolicyChange(None)
    settings = await update_settings(gw, GatewaySettings, blank_gateway_settings(), change)
    if change.changed:
        # Only what this clear retired: a racing set may already point at a newer revision.
        await supersede_older(gw, GLOBAL_SCOPE, change.cleared_version + 1)
    return UpdateConfigResponse(settings_revision=settings.revision, deleted=change.changed)


# --- revisions: list, status, report ----------------------------------------------------------


async def _scope_of(gw: Gateway, request: object, name: str, workspace: str) -> tuple[str, int]:
    """(scope, active version) of a request naming a sandbox or ``global``."""
    if is_global(request):
        settings = await load_gateway_settings(gw)
        active = settings.global_policy.version if settings is not None else 0
        return GLOBAL_SCOPE, active
    sandbox = await find_sandbox(gw, name, workspace)
    await effective_revision(gw, sandbox)
    return sandbox.metadata.id, sandbox.status.current_policy_version


def public_revision(
    stored: StoredPolicyRevision, *, with_policy: bool
) -> openshell_pb2.SandboxPolicyRevision:
    revision = openshell_pb2.SandboxPolicyRevision()
    revision.CopyFrom(stored.revision)
    if not with_policy:
        revision.ClearField("policy")
    return revision


async def list_sandbox_policies(
    gw: Gateway, request: openshell_pb2.ListSandboxPoliciesRequest
) -> openshell_pb2.ListSandboxPoliciesResponse:
    """Revisions, newest first, paged by version (the token is the last version served)."""
    size = effective_page_size(request.page_size)
    below = _below(request.page_token)
    workspace = single_workspace(request.workspace_scope)
    scope, _ = await _scope_of(gw, request, request.sandbox, workspace)
    rows = await gw.store.list_versions(REVISION_TYPE, scope, below=below, limit=size)
    revisions = [public_revision(decode(StoredPolicyRevision, r), with_policy=False) for r in rows]
    token = str(rows[-1].version) if len(rows) == size else ""
    return openshell_pb2.ListSandboxPoliciesResponse(revisions=revisions, next_page_token=token)


def _below(token: str) -> int | None:
    if not token:
        return None
    if not token.isdecimal():
        raise InvalidArgument.single("page_token", "invalid page token")
    return int(token)


async def get_sandbox_policy_status(
    gw: Gateway, request: openshell_pb2.GetSandboxPolicyStatusRequest
) -> openshell_pb2.GetSandboxPolicyStatusResponse:
    workspace = single_workspace(request.workspace_scope)
    scope, active = await _scope_of(gw, request, request.sandbox, workspace)
    if request.version:
        found = await revision_at(gw, scope, request.version)
    else:
        found = await latest_revision(gw, scope)
    if found is None:
        raise not_found("policy revision", str(request.version) if request.version else "latest")
    return openshell_pb2.GetSandboxPolicyStatusResponse(
        revision=public_revision(found, with_policy=True), active_version=active
    )


async def report_policy_status(
    gw: Gateway, request: openshell_pb2.ReportPolicyStatusRequest
) -> openshell_pb2.ReportPolicyStatusResponse:
    """A sandbox's load result: the revision's status by state-checked CAS; on LOADED, older
    revisions are superseded and the sandbox's current_policy_version moves forward."""
    if not request.sandbox_id:
        raise InvalidArgument.single("sandbox_id", "sandbox_id is required")
    if not request.version:
        raise InvalidArgument.single("version", "version is required")
    mutation = report_status(request.status, request.load_error, gw.clock_ms())
    found = await revision_at(gw, request.sandbox_id, request.version)
    if found is None:
        raise not_found("policy revision", f"{request.sandbox_id} v{request.version}")
    outcome = await gw.store.update_message_cas(
        StoredPolicyRevision, found.metadata.id, mutation, status=revision_status
    )
    if outcome.message.revision.status == SUPERSEDED:
        return openshell_pb2.ReportPolicyStatusResponse()  # a late report changes nothing
    if request.status == LOADED:
        await supersede_older(gw, request.sandbox_id, request.version, ACTIVE_WORDS)
        with contextlib.suppress(NotFound):  # the sandbox is gone; its revisions go with it
            await gw.store.update_message_cas(
                Sandbox, request.sandbox_id, raise_current_version(request.version)
            )
    return openshell_pb2.ReportPolicyStatusResponse()
