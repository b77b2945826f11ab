"""Draft-policy RPCs: SubmitPolicyAnalysis, GetDraftPolicy, Approve/Reject/ApproveAll/Edit/
Undo/Clear, GetDraftHistory.

Approve crash-safety (docs/config.md): a decision is a chunk CAS that records the policy
``effect`` still owed, then a revision, then clearing the effect (``draft_effects``). Each
write RPC finishes its own decision's effects before answering, and also any half-done
decision it finds on the chunks it is about to change (``settle_effects``), so it decides
from a settled state. GetDraftPolicy and GetDraftHistory are pure reads: a decision left
half-done by a crashed replica is finished by the draft reconcile loop
(``reconcile/drafts.py``), fed by the change feed and the periodic resync.
"""

from __future__ import annotations

import logging
import uuid

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.controller.draft_effects import apply_effects, decide_chunk, settle_effects
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import not_found
from shellgate.controller.service.requests import (
    find_live_sandbox,
    find_sandbox,
    single_workspace,
)
from shellgate.reconcilers import drafts as rules
from shellgate.reconcilers.errors import FailedPrecondition, InvalidArgument
from shellgate.reconcilers.policy import (
    policy_base,
    require_valid_policy,
)
from shellgate.reconcilers.policy_merge import (
    MergeOperation,
    add_rule_operation,
    apply_merge_operations,
)
from shellgate.reconcilers.settings import require_no_global_policy
from shellgate.store import NotFound
from shellgate.store.repositories import StoredDraftChunk, StoredPolicyRevision

log = logging.getLogger(__name__)


Sandbox = openshell_pb2.Sandbox
CHUNK_ID_NAMESPACE = uuid.UUID("5b1f6d4e-8a2c-4f1e-9c3d-2e7a9b0c4d51")


def _chunk_id(sandbox_id: str, key: str) -> str:
    """Deterministic for a dedup key, so a repeated observation collides on the primary key
    and folds into the existing chunk; random without one."""
    if not key:
        return str(uuid.uuid4())
    return str(uuid.uuid5(CHUNK_ID_NAMESPACE, f"{sandbox_id}|{key}"))


async def _chunks(gw: Gateway, sandbox: Sandbox) -> list[StoredDraftChunk]:
    """The sandbox's chunks for a write RPC, any half-done decision among them finished."""
    return await settle_effects(gw, sandbox, await gw.repos.chunks.of_sandbox(sandbox.metadata.id))


async def _chunk(gw: Gateway, sandbox: Sandbox, chunk_id: str) -> StoredDraftChunk:
    if not chunk_id:
        raise InvalidArgument.single("chunk_id", "chunk_id is required")
    stored = await gw.repos.chunks.get(chunk_id)
    if stored is None or stored.sandbox_id != sandbox.metadata.id:
        raise not_found("chunk", chunk_id)
    if stored.effect == rules.EFFECT_NONE:
        return stored
    await settle_effects(gw, sandbox, [stored])
    settled = await gw.repos.chunks.get(chunk_id)
    if settled is None:
        raise not_found("chunk", chunk_id)
    return settled


def _check_candidate(
    sandbox: Sandbox, latest: StoredPolicyRevision | None, ops: list[MergeOperation]
) -> None:
    """Validate before the decision is written: the merged policy must be storable now."""
    candidate = apply_merge_operations(policy_base(sandbox, latest), ops).policy
    require_valid_policy(candidate)


async def _policy_sandbox(
    gw: Gateway, name: str, workspace_scope: datamodel_pb2.WorkspaceSelector
) -> Sandbox:
    """The sandbox of a decision that changes its policy (refused under a global policy)."""
    require_no_global_policy(await gw.repos.settings.load_gateway())
    return await find_live_sandbox(gw, name, single_workspace(workspace_scope))


def _policy_reached(revision: StoredPolicyRevision | None) -> tuple[int, str]:
    """The version and hash of the policy a decision left (0 and "" while none exists)."""
    if revision is None:
        return 0, ""
    return revision.revision.version, revision.revision.policy_hash


# --- RPCs -------------------------------------------------------------------------------------


async def submit_policy_analysis(
    gw: Gateway, request: openshell_pb2.SubmitPolicyAnalysisRequest
) -> openshell_pb2.SubmitPolicyAnalysisResponse:
    """Store each valid proposed chunk as pending; a repeated denial (same host, port and
    binary) folds into its existing chunk's hit count instead of adding a chunk."""
    if len(request.proposed_chunks) > rules.MAX_CHUNKS_PER_SUBMISSION:
        raise InvalidArgument.single(
            "proposed_chunks",
            f"proposed_chunks exceeds maximum entries of {rules.MAX_CHUNKS_PER_SUBMISSION}",
        )
    sandbox = await find_live_sandbox(gw, request.name, single_workspace(request.workspace_scope))
    existing = await gw.repos.chunks.of_sandbox(sandbox.metadata.id)
    draft_version = max((c.draft_version for c in existing), default=0) + 1
    response = openshell_pb2.SubmitPolicyAnalysisResponse()
    for proposed in request.proposed_chunks:
        problem = rules.proposal_problem(proposed)
        if problem is not None:
            response.rejected_chunks += 1
            response.rejection_reasons.append(problem)
            continue
        chunk_id = await _store_proposal(gw, sandbox, proposed, draft_version)
        response.accepted_chunks += 1
        response.accepted_chunk_ids.append(chunk_id)
    return response


async def _store_proposal(
    gw: Gateway, sandbox: Sandbox, proposed: openshell_pb2.PolicyChunk, draft_version: int
) -> str:
    """Insert the chunk; when its id exists (a repeated denial), fold the observation into
    the existing chunk instead."""
    chunk_id = _chunk_id(sandbox.metadata.id, rules.dedup_key(proposed))

    def observation() -> tuple[StoredDraftChunk, rules.ChunkMutation]:
        now = gw.clock_ms()
        stored = rules.new_chunk(
            chunk_id=chunk_id,
            sandbox_id=sandbox.metadata.id,
            workspace=sandbox.metadata.workspace,
            proposed=proposed,
            draft_version=draft_version,
            now_ms=now,
        )
        return stored, rules.fold_observation(proposed.hit_count, now)

    await gw.repos.chunks.insert_or_fold(observation, rules.chunk_status)
    return chunk_id


async def get_draft_policy(
    gw: Gateway, request: openshell_pb2.GetDraftPolicyRequest
) -> openshell_pb2.GetDraftPolicyResponse:
    wanted = request.status_filter
    if wanted and wanted not in rules.STATUSES:
        raise InvalidArgument.single(
            "status_filter", f"status_filter must be one of {', '.join(rules.STATUSES)}"
        )
    sandbox = await find_sandbox(gw, request.sandbox, single_workspace(request.workspace_scope))
    chunks = await gw.repos.chunks.of_sandbox(sandbox.metadata.id)  # a read never writes
    shown = [c for c in chunks if not wanted or c.chunk.status == wanted]
    shown.sort(key=lambda c: (c.chunk.created_time.ToMilliseconds(), c.chunk.id), reverse=True)
    response = openshell_pb2.GetDraftPolicyResponse(
        chunks=[rules.public_chunk(c) for c in shown],
        draft_version=max((c.draft_version for c in chunks), default=0),
    )
    if chunks:
        newest = max(chunks, key=lambda c: c.chunk.created_time.ToMilliseconds())
        response.last_analyzed_time.CopyFrom(newest.chunk.created_time)
    return response


async def approve_draft_chunk(
    gw: Gateway, request: openshell_pb2.ApproveDraftChunkRequest
) -> openshell_pb2.ApproveDraftChunkResponse:
    """Validate the merged candidate, decide (chunk CAS), then merge (revision), then settle."""
    sandbox = await _policy_sandbox(gw, request.sandbox, request.workspace_scope)
    stored = await _chunk(gw, sandbox, request.chunk_id)
    latest = await gw.repos.revisions.latest(sandbox.metadata.id)
    addition = add_rule_operation(stored.chunk.rule_name, stored.chunk.proposed_rule)
    _check_candidate(sandbox, latest, [addition])
    base = latest.revision.version if latest is not None else 0
    decided = await decide_chunk(
        gw, stored.metadata.id, rules.approve(request.review_token, gw.clock_ms(), base)
    )
    version, digest = _policy_reached(await apply_effects(gw, sandbox, [decided]))
    return openshell_pb2.ApproveDraftChunkResponse(policy_version=version, policy_hash=digest)


async def reject_draft_chunk(
    gw: Gateway, request: openshell_pb2.RejectDraftChunkRequest
) -> openshell_pb2.RejectDraftChunkResponse:
    """Pending → rejected; the policy is untouched (a pending chunk was never merged)."""
    mutation = rules.reject(request.reason, gw.clock_ms())
    await _decide_named_chunk(gw, request, mutation)
    return openshell_pb2.RejectDraftChunkResponse()


async def approve_all_draft_chunks(
    gw: Gateway, request: openshell_pb2.ApproveAllDraftChunksRequest
) -> openshell_pb2.ApproveAllDraftChunksResponse:
    """Approve the selected chunks one CAS each, then merge them all in one revision."""
    sandbox = await _policy_sandbox(gw, request.sandbox, request.workspace_scope)
    chunks = await _chunks(gw, sandbox)
    chosen, skipped = rules.select_for_approve_all(
        chunks, request.approvals, request.include_security_flagged
    )
    if not chosen and not skipped:
        raise FailedPrecondition("no pending chunks to approve", rules.PENDING)
    latest = await gw.repos.revisions.latest(sandbox.metadata.id)
    additions = [add_rule_operation(c.chunk.rule_name, c.chunk.proposed_rule) for c, _ in chosen]
    _check_candidate(sandbox, latest, additions)
    base = latest.revision.version if latest is not None else 0
    decided = []
    for stored, token in chosen:
        try:
            decided.append(
                await decide_chunk(
                    gw, stored.metadata.id, rules.approve(token, gw.clock_ms(), base)
                )
            )
        except (FailedPrecondition, NotFound):
            skipped += 1  # decided (or cleared) by someone else meanwhile
    version, digest = _policy_reached(
        await apply_effects(gw, sandbox, decided) if decided else latest
    )
    return openshell_pb2.ApproveAllDraftChunksResponse(
        policy_version=version,
        policy_hash=digest,
        chunks_approved=len(decided),
        chunks_skipped=skipped,
    )


async def edit_draft_chunk(
    gw: Gateway, request: openshell_pb2.EditDraftChunkRequest
) -> openshell_pb2.EditDraftChunkResponse:
    if not request.HasField("proposed_rule"):
        raise InvalidArgument.single("proposed_rule", "proposed_rule is required")
    mutation = rules.edit(request.proposed_rule, gw.clock_ms())
    await _decide_named_chunk(gw, request, mutation)
    return openshell_pb2.EditDraftChunkResponse()


async def _decide_named_chunk(
    gw: Gateway,
    request: openshell_pb2.RejectDraftChunkRequest | openshell_pb2.EditDraftChunkRequest,
    mutation: rules.ChunkMutation,
) -> None:
    """The chunk a request names, in its live sandbox, changed by one state-checked CAS."""
    sandbox = await find_live_sandbox(
        gw, request.sandbox, single_workspace(request.workspace_scope)
    )
    stored = await _chunk(gw, sandbox, request.chunk_id)
    await decide_chunk(gw, stored.metadata.id, mutation)


async def undo_draft_chunk(
    gw: Gateway, request: openshell_pb2.UndoDraftChunkRequest
) -> openshell_pb2.UndoDraftChunkResponse:
    """Approved → pending, then the rule leaves the policy (same two-step protocol)."""
    sandbox = await _policy_sandbox(gw, request.sandbox, request.workspace_scope)
    stored = await _chunk(gw, sandbox, request.chunk_id)
    undone = await decide_chunk(gw, stored.metadata.id, rules.undo(gw.clock_ms()))
    version, digest = _policy_reached(await apply_effects(gw, sandbox, [undone]))
    return openshell_pb2.UndoDraftChunkResponse(policy_version=version, policy_hash=digest)


async def clear_draft_chunks(
    gw: Gateway, request: openshell_pb2.ClearDraftChunksRequest
) -> openshell_pb2.ClearDraftChunksResponse:
    """Delete every pending chunk, each bound to the version read (a chunk decided
    meanwhile has another version, is read again, and is kept)."""
    sandbox = await find_live_sandbox(
        gw, request.sandbox, single_workspace(request.workspace_scope)
    )
    cleared = 0
    for stored in await _chunks(gw, sandbox):
        if _clearable(stored):
            cleared += await _delete_if_pending(gw, stored)
    return openshell_pb2.ClearDraftChunksResponse(chunks_cleared=cleared)


def _clearable(stored: StoredDraftChunk) -> bool:
    return stored.chunk.status == rules.PENDING and stored.effect == rules.EFFECT_NONE


async def _delete_if_pending(gw: Gateway, stored: StoredDraftChunk) -> int:
    return int(await gw.repos.chunks.delete_if_still(stored, _clearable))


async def get_draft_history(
    gw: Gateway, request: openshell_pb2.GetDraftHistoryRequest
) -> openshell_pb2.GetDraftHistoryResponse:
    sandbox = await find_sandbox(gw, request.sandbox, single_workspace(request.workspace_scope))
    chunks = await gw.repos.chunks.of_sandbox(sandbox.metadata.id)  # a read never writes
    return openshell_pb2.GetDraftHistoryResponse(entries=rules.history(chunks))
