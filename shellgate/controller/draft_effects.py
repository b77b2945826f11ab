"""A draft-chunk decision's policy effect: committing it and settling it.

A decision that changes the policy is two writes on two rows. The chunk is written first, by
a state-checked CAS, with an ``effect`` (ADDING or REMOVING) naming what the policy still
owes; then a revision is committed that contains (or no longer contains) the rule; then the
effect is cleared. Both later steps are idempotent by content: "the latest revision already
contains the rule" is "merging the rule into it changes nothing". So whoever finds a chunk
with an effect, the handler that decided or the draft reconcile loop after a crash, completes
the same change, never a second one. A copy may be stale (the decision was undone or replaced
meanwhile), so every insert attempt re-reads the chunk after the latest revision and applies
only effects still owed by the same decision.

The RPC handlers (a layer above) and the reconcile loop both use this module.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence

from shellgate.api import openshell_pb2, sandbox_pb2
from shellgate.controller.gateway import Gateway
from shellgate.reconcilers import drafts as rules
from shellgate.reconcilers.errors import DomainError
from shellgate.reconcilers.policy import next_revision, policy_base, revision_status, supersede
from shellgate.reconcilers.policy_merge import Addition, MergeOperation, apply_merge_operations
from shellgate.store import NotFound, StoreError
from shellgate.store.repositories import StoredDraftChunk, StoredPolicyRevision

log = logging.getLogger(__name__)

AppliedAddition = rules.AppliedAddition
Sandbox = openshell_pb2.Sandbox
DELETING = openshell_pb2.SANDBOX_PHASE_DELETING


async def decide_chunk(
    gw: Gateway, chunk_id: str, mutation: rules.ChunkMutation
) -> StoredDraftChunk:
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


async def clear_effects(
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
            await decide_chunk(gw, stored.metadata.id, mutation)
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
    await clear_effects(gw, settlements, revision)
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
            await clear_effects(gw, [(stored, addition)], latest)
            continue
        reason = "the rule no longer merges into the current policy"
        mutation = rules.abandon_approval(reason, gw.clock_ms(), stored.review_seq)
        await decide_chunk(gw, stored.metadata.id, mutation)


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
