"""Draft-policy RPCs: SubmitPolicyAnalysis, GetDraftPolicy, Approve/Reject/ApproveAll/Edit/
Undo/Clear, GetDraftHistory.

Approve crash-safety (docs/config.md): a decision that changes the policy is two writes on
two rows. The chunk is written first, by a state-checked CAS, with an ``effect`` (ADDING or
REMOVING) naming what the policy still owes; then a revision is committed that contains (or
no longer contains) the rule; then the effect is cleared. Both later steps are idempotent by
content: "the latest revision already contains the rule" is "merging the rule into it
changes nothing". So whoever finds a chunk with an effect, the original handler or any
replica that reads the chunk after a crash (``settle_effects`` runs at the start of every
draft RPC), completes the same change, never a second one. A reader's copy may be stale
(the decision was undone or replaced meanwhile), so every insert attempt re-reads the chunk
after the latest revision and applies only effects still owed by the same decision.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from shellgate.api import datamodel_pb2, openshell_pb2, sandbox_pb2
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.errors import not_found
from shellgate.controller.service.requests import (
    find_live_sandbox,
    find_sandbox,
    single_workspace,
)
from shellgate.reconcilers import drafts as rules
from shellgate.reconcilers.errors import DomainError, FailedPrecondition, InvalidArgument
from shellgate.reconcilers.policy import (
    next_revision,
    policy_base,
    require_valid_policy,
    revision_status,
    supersede,
)
from shellgate.reconcilers.policy_merge import (
    Addition,
    MergeOperation,
    add_rule_operation,
    apply_merge_operations,
)
from shellgate.reconcilers.settings import require_no_global_policy
from shellgate.store import NotFound, StoreError
from shellgate.store.repositories import StoredDraftChunk, StoredPolicyRevision

log = logging.getLogger(__name__)

AppliedAddition = rules.AppliedAddition

Sandbox = openshell_pb2.Sandbox
DELETING = openshell_pb2.SANDBOX_PHASE_DELETING
CHUNK_ID_NAMESPACE = uuid.UUID("5b1f6d4e-8a2c-4f1e-9c3d-2e7a9b0c4d51")


def _chunk_id(sandbox_id: str, key: str) -> str:
    """Deterministic for a dedup key, so a repeated observation collides on the primary key
    and folds into the existing chunk; random without one."""
    if not key:
        return str(uuid.uuid4())
    return str(uuid.uuid5(CHUNK_ID_NAMESPACE, f"{sandbox_id}|{key}"))


async def decide(gw: Gateway, chunk_id: str, mutation: rules.ChunkMutation) -> StoredDraftChunk:
    """A CAS on one chunk with a state-checking mutation (and its status column kept): step
    one of a decision, and also its settling, withdrawal and hit-count folds."""
    return await gw.repos.chunks.decide(chunk_id, mutation, rules.chunk_status)


# --- effects: the second and third step of a decision -----------------------------------------

Settlement = tuple[StoredDraftChunk, AppliedAddition | None]
"""A chunk whose effect the policy now agrees with, and (ADDING) what its merge added."""
SEARCH_PAGE = 50


def _operations(chunks: Sequence[StoredDraftChunk]) -> tuple[list[MergeOperation], list[int]]:
    """All pending effects as one list of operations, with each chunk's first op index."""
    operations: list[MergeOperation] = []
    starts = []
    for stored in chunks:
        starts.append(len(operations))
        operations += rules.effect_operations(stored)
    return operations, starts


async def commit_effects(
    gw: Gateway, sandbox: Sandbox, chunks: Sequence[StoredDraftChunk]
) -> tuple[StoredPolicyRevision | None, list[Settlement]]:
    """Step two: a revision in which every chunk's effect holds (none when it already did).

    ``chunks`` may be stale copies (a recovery that read them a while ago): on every insert
    attempt each is read again after the latest revision, and only the effects still owed
    by the same decision (same effect and review_seq) are applied. Returns the revision and
    the chunks to settle, each with what its addition added to the policy.
    """
    sandbox_id = sandbox.metadata.id
    kept: list[StoredDraftChunk] = []
    added: dict[str, Addition] = {}

    async def owed() -> bool:
        fresh = [await gw.repos.chunks.get(c.metadata.id) for c in chunks]
        kept[:] = [c for c, now in zip(chunks, fresh, strict=True) if rules.same_decision(c, now)]
        return bool(kept)

    def build(latest: StoredPolicyRevision | None) -> sandbox_pb2.SandboxPolicy:
        operations, starts = _operations(kept)
        result = apply_merge_operations(policy_base(sandbox, latest), operations)
        added.clear()
        for stored, start in zip(kept, starts, strict=True):
            if stored.effect == rules.EFFECT_ADDING:
                added[stored.metadata.id] = result.added[start]
        return result.policy

    def annotate(revision: StoredPolicyRevision) -> None:
        for stored in kept:
            addition = added.get(stored.metadata.id)
            if addition is not None and not addition.adds_nothing:
                revision.chunk_additions.append(rules.chunk_addition(stored, addition))

    async def plan(latest: StoredPolicyRevision | None) -> StoredPolicyRevision | None:
        """Re-checked on every attempt *after* the latest revision was read: the writer that
        moved a chunk on inserts its own revision after its chunk write, so the version
        index orders the two inserts and a retry sees the chunk as it is then."""
        if not await owed():
            return None
        candidate = next_revision(
            latest,
            build(latest),
            scope=sandbox_id,
            workspace=sandbox.metadata.workspace,
            revision_id=str(uuid.uuid4()),
            now_ms=gw.clock_ms(),
        )
        if candidate is not None:
            annotate(candidate)
        return candidate

    revisions = gw.repos.revisions
    if not chunks:
        return await revisions.latest(sandbox_id), []
    revision, inserted = await revisions.commit(sandbox_id, plan, revision_status)
    if revision is not None and inserted:
        version = revision.revision.version
        await revisions.supersede_older(
            sandbox_id, version, ("pending",), supersede, revision_status
        )
    settlements: list[Settlement] = []
    for stored in kept:
        addition = added.get(stored.metadata.id)
        if addition is None:
            settlements.append((stored, None))
        elif addition.adds_nothing:
            settlements.append((stored, await _earlier_addition(gw, sandbox_id, stored, addition)))
        else:
            settlements.append((stored, rules.applied_addition(addition)))
    return revision, settlements


async def _earlier_addition(
    gw: Gateway, sandbox_id: str, stored: StoredDraftChunk, covered: Addition
) -> AppliedAddition:
    """The policy already grants an approved chunk's rule: either an earlier attempt of this
    approval put it there (a crash between insert and settle; that revision carries the
    note of what it added) or the policy granted it anyway (undo then removes nothing)."""
    below: int | None = None
    while True:
        page = await gw.repos.revisions.below(sandbox_id, below, SEARCH_PAGE)
        found, done = rules.recorded_addition(stored, page)
        if found is not None:
            return found
        if done or len(page) < SEARCH_PAGE:
            return rules.applied_addition(covered)
        below = page[-1].revision.version


async def settle(
    gw: Gateway, settlements: Sequence[Settlement], revision: StoredPolicyRevision | None
) -> None:
    """Step three: clear each chunk's effect (a no-op if someone else already did, or the
    chunk has moved on to another decision)."""
    version = revision.revision.version if revision is not None else 0
    for stored, addition in settlements:
        mutation = rules.settle(
            stored.effect,
            version,
            addition.rule_name if addition is not None else "",
            review_seq=stored.review_seq,
            addition=addition,
        )
        try:
            await decide(gw, stored.metadata.id, mutation)
        except NotFound:
            continue


async def apply_effects(
    gw: Gateway, sandbox: Sandbox, chunks: Sequence[StoredDraftChunk]
) -> StoredPolicyRevision | None:
    """Steps two and three. When the change can no longer be made (the merged policy fails
    validation against a revision that moved on), the decision is withdrawn and the error
    returned; a lost insert race (ABORTED) leaves the effect for the next reader."""
    pending = [c for c in chunks if c.effect != rules.EFFECT_NONE]
    try:
        revision, settlements = await commit_effects(gw, sandbox, pending)
    except DomainError:
        await _withdraw(gw, sandbox, pending)
        raise
    await settle(gw, settlements, revision)
    return revision


async def _withdraw(gw: Gateway, sandbox: Sandbox, chunks: Sequence[StoredDraftChunk]) -> None:
    """Take back approvals whose rule cannot join the policy. One that another replica's
    recovery managed to apply meanwhile is settled instead, so the chunk still matches."""
    for stored in chunks:
        if stored.effect != rules.EFFECT_ADDING:
            continue
        latest = await gw.repos.revisions.latest(sandbox.metadata.id)
        covered = _covered_addition(policy_base(sandbox, latest), stored)
        if covered is not None:
            addition = await _earlier_addition(gw, sandbox.metadata.id, stored, covered)
            await settle(gw, [(stored, addition)], latest)
            continue
        reason = "the rule no longer merges into the current policy"
        mutation = rules.abandon_approval(reason, gw.clock_ms(), stored.review_seq)
        await decide(gw, stored.metadata.id, mutation)


def _covered_addition(base: sandbox_pb2.SandboxPolicy, stored: StoredDraftChunk) -> Addition | None:
    """The (empty) addition of ``stored`` when ``base`` already grants its rule, else None."""
    try:
        result = apply_merge_operations(base, rules.effect_operations(stored))
    except DomainError:
        return None
    return result.added.get(0) if result.policy == base else None


async def settle_effects(
    gw: Gateway, sandbox: Sandbox, chunks: list[StoredDraftChunk]
) -> list[StoredDraftChunk]:
    """The recovery step: finish any decision a crashed (or slow) handler left half-done.
    Returns the chunks as they are afterwards. Skipped for a sandbox being deleted, whose
    rows are being removed (a revision inserted now would be left behind)."""
    if sandbox.status.phase == DELETING or all(c.effect == rules.EFFECT_NONE for c in chunks):
        return chunks
    try:
        await apply_effects(gw, sandbox, chunks)
    except (DomainError, StoreError) as exc:
        log.warning("could not finish draft decisions of sandbox %s: %s", sandbox.metadata.id, exc)
    return await gw.repos.chunks.of_sandbox(sandbox.metadata.id)


async def _chunks(gw: Gateway, sandbox: Sandbox) -> list[StoredDraftChunk]:
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
    chunks = await _chunks(gw, sandbox)
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
    decided = await decide(
        gw, stored.metadata.id, rules.approve(request.review_token, gw.clock_ms(), base)
    )
    revision = await apply_effects(gw, sandbox, [decided])
    return openshell_pb2.ApproveDraftChunkResponse(
        policy_version=revision.revision.version if revision else 0,
        policy_hash=revision.revision.policy_hash if revision else "",
    )


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
                await decide(gw, stored.metadata.id, rules.approve(token, gw.clock_ms(), base))
            )
        except (FailedPrecondition, NotFound):
            skipped += 1  # decided (or cleared) by someone else meanwhile
    revision = await apply_effects(gw, sandbox, decided) if decided else latest
    return openshell_pb2.ApproveAllDraftChunksResponse(
        policy_version=revision.revision.version if revision else 0,
        policy_hash=revision.revision.policy_hash if revision else "",
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
    await decide(gw, stored.metadata.id, mutation)


async def undo_draft_chunk(
    gw: Gateway, request: openshell_pb2.UndoDraftChunkRequest
) -> openshell_pb2.UndoDraftChunkResponse:
    """Approved → pending, then the rule leaves the policy (same two-step protocol)."""
    sandbox = await _policy_sandbox(gw, request.sandbox, request.workspace_scope)
    stored = await _chunk(gw, sandbox, request.chunk_id)
    undone = await decide(gw, stored.metadata.id, rules.undo(gw.clock_ms()))
    revision = await apply_effects(gw, sandbox, [undone])
    return openshell_pb2.UndoDraftChunkResponse(
        policy_version=revision.revision.version if revision else 0,
        policy_hash=revision.revision.policy_hash if revision else "",
    )


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
    chunks = await _chunks(gw, sandbox)
    return openshell_pb2.GetDraftHistoryResponse(entries=rules.history(chunks))
