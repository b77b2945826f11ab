"""Policy RPCs: UpdateConfig's policy paths, ListSandboxPolicies, GetSandboxPolicyStatus,
ReportPolicyStatus.

A sandbox's policy is its latest revision (scope = sandbox id); a global policy, when one is
set, overrides every sandbox's. Every new revision goes through the revision repository's
``commit`` with a plan built here from ``reconcilers.policy`` (insert n+1, the version index
arbitrates, rebuild and retry on a lost race); every status change through a state-checked
CAS.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Sequence

from shellgate.api import openshell_pb2, sandbox_pb2
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import not_found
from shellgate.controller.service.requests import (
    effective_revision,
    find_sandbox,
    single_workspace,
)
from shellgate.reconcilers.errors import InvalidArgument
from shellgate.reconcilers.policy import (
    ACTIVE_WORDS,
    GLOBAL_SCOPE,
    LOADED,
    PENDING,
    SUPERSEDED,
    StoredPolicyRevision,
    any_revision,
    backfill_policy,
    next_revision,
    policy_base,
    raise_current_version,
    report_status,
    require_acceptable_policy,
    revision_status,
    supersede,
    validate_static_fields,
    with_default_identity,
)
from shellgate.reconcilers.policy_merge import MergeOperation, apply_merge_operations
from shellgate.reconcilers.settings import GlobalPolicyChange, is_global, require_no_global_policy
from shellgate.reconcilers.validation import effective_page_size
from shellgate.store import NotFound
from shellgate.store.paging import decode_version_token, encode_version_token

Sandbox = openshell_pb2.Sandbox
SandboxPolicy = sandbox_pb2.SandboxPolicy
UpdateConfigResponse = openshell_pb2.UpdateConfigResponse


Build = Callable[[StoredPolicyRevision | None], SandboxPolicy]
"""Builds the policy to store from the latest revision (None: there is none yet). Pure, and
run again on every attempt, so a retry re-applies the change to what is latest then."""


async def commit_revision(
    gw: Gateway,
    scope: str,
    workspace: str,
    build: Build,
    *,
    status: int = PENDING,
    supersedes: Sequence[str] = ("pending",),
    reusable: Callable[[StoredPolicyRevision], bool] = any_revision,
) -> StoredPolicyRevision:
    """Store ``build(latest)`` as version n+1 of ``scope`` (nothing when the latest revision
    already holds it and ``reusable`` says it can serve); then older revisions in
    ``supersedes`` are superseded. Returns the revision that holds the policy now."""

    async def plan(latest: StoredPolicyRevision | None) -> StoredPolicyRevision | None:
        return next_revision(
            latest,
            build(latest),
            scope=scope,
            workspace=workspace,
            revision_id=str(uuid.uuid4()),
            now_ms=gw.clock_ms(),
            status=status,
            reusable=reusable,
        )

    revisions = gw.repos.revisions
    revision, inserted = await revisions.commit(scope, plan, revision_status)
    assert revision is not None  # the plan declines only in favour of an existing latest
    if inserted:
        version = revision.revision.version
        await revisions.supersede_older(scope, version, supersedes, supersede, revision_status)
    return revision


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
    require_no_global_policy(await gw.repos.settings.load_gateway())
    candidate = with_default_identity(policy)
    if sandbox.spec.HasField("policy"):
        # The reference reports a change to a field fixed at start before anything else
        # wrong with the policy; the CAS below checks it again on the row it writes.
        validate_static_fields(sandbox.spec.policy, candidate)
    require_acceptable_policy(candidate)
    await gw.repos.sandboxes.update(
        sandbox.metadata.id, backfill_policy(candidate), expected_version
    )
    revision = await commit_revision(
        gw, sandbox.metadata.id, sandbox.metadata.workspace, lambda _latest: candidate
    )
    return _response(revision)


async def merge_sandbox_policy(
    gw: Gateway, sandbox: Sandbox, operations: Sequence[MergeOperation]
) -> UpdateConfigResponse:
    """Merge operations, re-applied to whatever revision is latest on every attempt (and
    validated there, before the insert: a target may exist only in the latest revision)."""
    require_no_global_policy(await gw.repos.settings.load_gateway())
    baseline = sandbox.spec.policy if sandbox.spec.HasField("policy") else None

    def build(latest: StoredPolicyRevision | None) -> SandboxPolicy:
        candidate = apply_merge_operations(policy_base(sandbox, latest), operations).policy
        if baseline is not None:
            validate_static_fields(baseline, candidate)
        return candidate

    revision = await commit_revision(gw, sandbox.metadata.id, sandbox.metadata.workspace, build)
    return _response(revision)


# --- global scope -----------------------------------------------------------------------------


async def set_global_policy(gw: Gateway, policy: SandboxPolicy) -> UpdateConfigResponse:
    """A global policy: revision n+1 in scope ``__global__`` (loaded at once: no sandbox
    reports on it), then the gateway settings point at it by CAS. A crash in between is
    repaired by repeating the request: the unchanged hash finds the revision, and the
    pointer is written then."""
    candidate = with_default_identity(policy)
    require_acceptable_policy(candidate)
    revision = await commit_revision(
        gw,
        GLOBAL_SCOPE,
        "",
        lambda _latest: candidate,
        status=LOADED,
        supersedes=ACTIVE_WORDS,
        reusable=lambda latest: latest.revision.status == LOADED,
    )
    change = GlobalPolicyChange(candidate, revision.revision.version, revision.revision.policy_hash)
    settings = await gw.repos.settings.update(gw.repos.settings.blank_gateway(), change)
    return _response(revision, settings.revision)


async def clear_global_policy(gw: Gateway) -> UpdateConfigResponse:
    """Delete the global policy (``setting_key=policy, delete_setting``); sandboxes return
    to their own policies, and the global revisions are superseded."""
    change = GlobalPolicyChange(None)
    settings = await gw.repos.settings.update(gw.repos.settings.blank_gateway(), change)
    if change.changed:
        # Only what this clear retired: a racing set may already point at a newer revision.
        await gw.repos.revisions.supersede_older(
            GLOBAL_SCOPE, change.cleared_version + 1, ACTIVE_WORDS, supersede, revision_status
        )
    return UpdateConfigResponse(settings_revision=settings.revision, deleted=change.changed)


# --- revisions: list, status, report ----------------------------------------------------------


async def _scope_of(gw: Gateway, request: object, name: str, workspace: str) -> tuple[str, int]:
    """(scope, active version) of a request naming a sandbox or ``global``."""
    if is_global(request):
        settings = await gw.repos.settings.load_gateway()
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
    below = decode_version_token(request.page_token)
    workspace = single_workspace(request.workspace_scope)
    scope, _ = await _scope_of(gw, request, request.sandbox, workspace)
    rows = await gw.repos.revisions.below(scope, below, size)
    revisions = [public_revision(r, with_policy=False) for r in rows]
    last = rows[-1].revision.version if len(rows) == size else None
    token = encode_version_token(last) if last else ""
    return openshell_pb2.ListSandboxPoliciesResponse(revisions=revisions, next_page_token=token)


async def get_sandbox_policy_status(
    gw: Gateway, request: openshell_pb2.GetSandboxPolicyStatusRequest
) -> openshell_pb2.GetSandboxPolicyStatusResponse:
    workspace = single_workspace(request.workspace_scope)
    scope, active = await _scope_of(gw, request, request.sandbox, workspace)
    if request.version:
        found = await gw.repos.revisions.at(scope, request.version)
    else:
        found = await gw.repos.revisions.latest(scope)
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
    found = await gw.repos.revisions.at(request.sandbox_id, request.version)
    if found is None:
        raise not_found("policy revision", f"{request.sandbox_id} v{request.version}")
    outcome = await gw.repos.revisions.update(found.metadata.id, mutation, revision_status)
    if outcome.message.revision.status == SUPERSEDED:
        return openshell_pb2.ReportPolicyStatusResponse()  # a late report changes nothing
    if request.status == LOADED:
        await gw.repos.revisions.supersede_older(
            request.sandbox_id, request.version, ACTIVE_WORDS, supersede, revision_status
        )
        with contextlib.suppress(NotFound):  # the sandbox is gone; its revisions go with it
            await gw.repos.sandboxes.update(
                request.sandbox_id, raise_current_version(request.version)
            )
    return openshell_pb2.ReportPolicyStatusResponse()
