"""Draft-policy chunk decisions: Approve, Reject, ApproveAll, Edit, Undo and Clear.

A chunk is a proposed network rule. Its status (pending, approved, rejected) changes only
through the mutations below, each checked against the freshly read chunk, so of
two racing decisions on one chunk exactly one is written and the other gets
FAILED_PRECONDITION naming the status it found:

* approve: from pending; from rejected only with the chunk's current review token (proof the
  reviewer saw the rejection). A token, when given, must match in any case.
* reject: from pending only. (The reference also "rejects" an approved chunk; here that is
  an undo followed by a reject, so an approve and a reject never both succeed.)
* undo: from approved back to pending.
* edit: pending only.

A decision that changes the policy (approve, undo) is written to the chunk *first*, with an
``effect`` saying what the policy still owes (ADDING or REMOVING); then the revision is
inserted; then ``settle`` clears the effect. A crash between the steps leaves the effect set,
and whoever reads the chunk next completes it (docs/config.md, "Approve crash-safety").
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Sequence

from shellgate.api import internal_pb2, openshell_pb2, sandbox_pb2
from shellgate.reconcilers.errors import FailedPrecondition, InvalidArgument
from shellgate.reconcilers.policy import validate_rule
from shellgate.reconcilers.policy_merge import (
    Addition,
    MergeOperation,
    add_rule_operation,
    covering_rule,
    ports_of,
    removal_operations,
    undo_operations,
)
from shellgate.reconcilers.validation import validate_max_len

StoredDraftChunk = internal_pb2.StoredDraftChunk
AppliedAddition = internal_pb2.AppliedAddition
ChunkAddition = internal_pb2.ChunkAddition
PolicyChunk = openshell_pb2.PolicyChunk
DraftHistoryEntry = openshell_pb2.DraftHistoryEntry
ChunkMutation = Callable[[StoredDraftChunk], StoredDraftChunk]
"""What ``update_message_cas`` applies to a chunk: edit the copy in place and return it."""

PENDING = "pending"
APPROVED = "approved"
REJECTED = "rejected"
STATUSES = (PENDING, APPROVED, REJECTED)
EFFECT_NONE = internal_pb2.CHUNK_EFFECT_NONE
EFFECT_ADDING = internal_pb2.CHUNK_EFFECT_ADDING
EFFECT_REMOVING = internal_pb2.CHUNK_EFFECT_REMOVING

MAX_CHUNKS_PER_SUBMISSION = 256
MAX_TEXT_LEN = 8192
"""rationale, security_notes, reason (bytes)."""
MAX_HISTORY = 64
"""History entries kept per chunk (oldest dropped)."""
MAX_HIT_COUNT = 2**31 - 1
DATABASE_PORTS = frozenset({1433, 1521, 3306, 5432, 6379, 9042, 9200, 11211, 27017})


# --- submission -------------------------------------------------------------------------------


def proposal_problem(proposed: PolicyChunk) -> str | None:
    """Why a proposed chunk cannot be stored, or None when it can."""
    if not proposed.rule_name.strip():
        return "chunk missing rule_name"
    if not proposed.HasField("proposed_rule"):
        return f"chunk {proposed.rule_name!r} missing proposed_rule"
    violations = validate_rule(proposed.proposed_rule, "proposed_rule")
    violations += validate_max_len(proposed.rationale, "rationale", MAX_TEXT_LEN)
    if violations:
        return f"chunk {proposed.rule_name!r}: {violations[0].description}"
    return None


def _first_target(rule: sandbox_pb2.NetworkPolicyRule) -> tuple[str, int, str]:
    endpoint = rule.endpoints[0] if rule.endpoints else sandbox_pb2.NetworkEndpoint()
    ports = ports_of(endpoint)
    binary = rule.binaries[0].path if rule.binaries else ""
    return endpoint.host.lower(), ports[0] if ports else 0, binary


def dedup_key(proposed: PolicyChunk) -> str:
    """host|port|binary: repeated observations of one denial fold into one chunk."""
    host, port, binary = _first_target(proposed.proposed_rule)
    return f"{host}|{port}|{binary}" if host else ""


def security_notes(host: str, port: int) -> str:
    """Why a reviewer should look twice; ApproveAll skips flagged chunks unless told."""
    notes = []
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and address.is_private:
        notes.append(f"{host} is a private address")
    if host.startswith("*"):
        notes.append(f"{host} is a wildcard host")
    if port in DATABASE_PORTS:
        notes.append(f"port {port} is a database port")
    return "; ".join(notes)


def new_chunk(
    *,
    chunk_id: str,
    sandbox_id: str,
    workspace: str,
    proposed: PolicyChunk,
    draft_version: int,
    now_ms: int,
) -> StoredDraftChunk:
    """The row of a newly proposed chunk (status pending, one hit at least)."""
    host, port, binary = _first_target(proposed.proposed_rule)
    stored = StoredDraftChunk(sandbox_id=sandbox_id, draft_version=draft_version)
    stored.metadata.id = chunk_id
    stored.metadata.workspace = workspace
    stored.dedup_key = dedup_key(proposed)
    chunk = stored.chunk
    chunk.id = chunk_id
    chunk.status = PENDING
    chunk.rule_name = proposed.rule_name
    chunk.proposed_rule.CopyFrom(proposed.proposed_rule)
    chunk.rationale = proposed.rationale
    chunk.security_notes = security_notes(host, port)
    chunk.confidence = min(max(proposed.confidence, 0.0), 1.0)
    chunk.denial_summary_ids.extend(proposed.denial_summary_ids)
    chunk.stage = proposed.stage or "initial"
    chunk.supersedes_chunk_id = proposed.supersedes_chunk_id
    chunk.hit_count = min(max(proposed.hit_count, 1), 100)
    chunk.binary = proposed.binary or binary
    chunk.created_time.FromMilliseconds(now_ms)
    for attr in ("first_seen_time", "last_seen_time"):
        seen = getattr(proposed, attr)
        getattr(chunk, attr).CopyFrom(seen if seen.seconds or seen.nanos else chunk.created_time)
    _log(stored, now_ms, "proposed", f"Rule {chunk.rule_name!r} proposed")
    return stored


def fold_observation(hits: int, now_ms: int) -> ChunkMutation:
    """A repeated observation of a chunk's denial: add its hits, move last_seen forward."""

    def mutate(stored: StoredDraftChunk) -> StoredDraftChunk:
        chunk = stored.chunk
        chunk.hit_count = min(chunk.hit_count + max(hits, 1), MAX_HIT_COUNT)
        if chunk.last_seen_time.ToMilliseconds() < now_ms:
            chunk.last_seen_time.FromMilliseconds(now_ms)
        return stored

    return mutate


# --- review tokens and views ------------------------------------------------------------------


def review_token(stored: StoredDraftChunk) -> str:
    """Names one state of one chunk: any change of the chunk gives a new token."""
    text = f"{stored.metadata.id}|{stored.review_seq}|{stored.chunk.status}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def public_chunk(stored: StoredDraftChunk) -> PolicyChunk:
    chunk = PolicyChunk()
    chunk.CopyFrom(stored.chunk)
    chunk.review_token = review_token(stored)
    return chunk


def history(chunks: Iterable[StoredDraftChunk]) -> list[DraftHistoryEntry]:
    """Every recorded event of every chunk, oldest first (ties by chunk id)."""
    entries = [entry for stored in chunks for entry in stored.history]
    entries.sort(key=lambda e: (e.event_time.ToMilliseconds(), e.chunk_id))
    return entries


def _log(stored: StoredDraftChunk, now_ms: int, event: str, description: str) -> None:
    entry = stored.history.add(event_type=event, description=description)
    entry.chunk_id = stored.chunk.id
    entry.event_time.FromMilliseconds(now_ms)
    if len(stored.history) > MAX_HISTORY:
        del stored.history[0]


# --- transitions ------------------------------------------------------------------------------


def _refuse(stored: StoredDraftChunk, action: str, expected: str) -> FailedPrecondition:
    status = stored.chunk.status
    return FailedPrecondition(
        f"cannot {action} chunk {stored.chunk.id!r}: its status is {status!r}, expected {expected}",
        status,
    )


def _require_settled(stored: StoredDraftChunk, action: str) -> None:
    """A chunk whose last decision still owes the policy a change takes no new decision."""
    if stored.effect != EFFECT_NONE:
        raise FailedPrecondition(
            f"cannot {action} chunk {stored.chunk.id!r}: its previous decision is still being "
            "applied to the policy; retry",
            stored.chunk.status,
        )


def _decidable(stored: StoredDraftChunk, action: str, status: str) -> PolicyChunk:
    """The chunk, when it is in ``status`` and its previous decision is settled."""
    if stored.chunk.status != status:
        raise _refuse(stored, action, f"{status!r}")
    _require_settled(stored, action)
    return stored.chunk


def _touch(stored: StoredDraftChunk, now_ms: int, event: str, description: str) -> None:
    stored.review_seq += 1
    _log(stored, now_ms, event, description)


def approve(token: str, now_ms: int, base_version: int = 0) -> ChunkMutation:
    """``base_version``: the latest revision's version as read before deciding (0: unknown)."""

    def mutate(stored: StoredDraftChunk) -> StoredDraftChunk:
        chunk = stored.chunk
        if token and token != review_token(stored):
            raise _refuse(stored, "approve", "the state that was reviewed (stale review token)")
        if chunk.status == APPROVED:
            raise _refuse(stored, "approve", "'pending'")
        if chunk.status == REJECTED and not token:
            raise _refuse(stored, "approve", "'pending' (or the review token of the rejection)")
        _require_settled(stored, "approve")
        chunk.status = APPROVED
        chunk.rejection_reason = ""
        chunk.decided_time.FromMilliseconds(now_ms)
        stored.effect = EFFECT_ADDING
        stored.applied_version = 0
        stored.ClearField("applied_addition")
        stored.decided_at_version = base_version
        _touch(stored, now_ms, APPROVED, f"Rule {chunk.rule_name!r} approved")
        return stored

    return mutate


def reject(reason: str, now_ms: int) -> ChunkMutation:
    if len(reason.encode()) > MAX_TEXT_LEN:
        raise InvalidArgument.single("reason", f"reason exceeds maximum length of {MAX_TEXT_LEN}")

    def mutate(stored: StoredDraftChunk) -> StoredDraftChunk:
        chunk = _decidable(stored, "reject", PENDING)
        chunk.status = REJECTED
        chunk.rejection_reason = reason
        chunk.decided_time.FromMilliseconds(now_ms)
        _touch(stored, now_ms, REJECTED, f"Rule {chunk.rule_name!r} rejected")
        return stored

    return mutate


def undo(now_ms: int) -> ChunkMutation:
    def mutate(stored: StoredDraftChunk) -> StoredDraftChunk:
        chunk = _decidable(stored, "undo", APPROVED)
        chunk.status = PENDING
        chunk.ClearField("decided_time")
        stored.effect = EFFECT_REMOVING
        _touch(stored, now_ms, "undone", f"Rule {chunk.rule_name!r} approval undone")
        return stored

    return mutate


def edit(rule: sandbox_pb2.NetworkPolicyRule, now_ms: int) -> ChunkMutation:
    violations = validate_rule(rule, "proposed_rule")
    if violations:
        raise InvalidArgument(violations)

    def mutate(stored: StoredDraftChunk) -> StoredDraftChunk:
        chunk = _decidable(stored, "edit", PENDING)
        if chunk.proposed_rule == rule:
            return stored
        chunk.proposed_rule.CopyFrom(rule)
        _touch(stored, now_ms, "edited", f"Rule {chunk.rule_name!r} edited")
        return stored

    return mutate


def settle(
    effect: int,
    version: int,
    landed: str,
    *,
    review_seq: int | None = None,
    addition: AppliedAddition | None = None,
) -> ChunkMutation:
    """The policy now agrees with the chunk: clear ``effect`` (only if it is still the one
    applied, and, given ``review_seq``, still the same decision, so a late settle cannot
    clear a newer decision's effect). An ADDING settle records what the merge added, which
    is what a later undo takes out."""

    def mutate(stored: StoredDraftChunk) -> StoredDraftChunk:
        if stored.effect != effect:
            return stored
        if review_seq is not None and stored.review_seq != review_seq:
            return stored
        stored.effect = EFFECT_NONE
        if effect == EFFECT_ADDING:
            stored.applied_version = version
            stored.applied_rule_name = landed
            if addition is not None:
                stored.applied_addition.CopyFrom(addition)
        else:
            stored.applied_version = 0
            stored.ClearField("applied_addition")
        return stored

    return mutate


def abandon_approval(reason: str, now_ms: int, review_seq: int | None = None) -> ChunkMutation:
    """An approval whose rule cannot join the policy any more (the policy moved on and the
    merge no longer validates) goes back to pending, with the reason recorded. Given
    ``review_seq``, only that decision is withdrawn, never a newer one."""

    def mutate(stored: StoredDraftChunk) -> StoredDraftChunk:
        if stored.effect != EFFECT_ADDING:
            return stored
        if review_seq is not None and stored.review_seq != review_seq:
            return stored
        chunk = stored.chunk
        chunk.status = PENDING
        chunk.ClearField("decided_time")
        chunk.application_error = reason[:MAX_TEXT_LEN]
        stored.effect = EFFECT_NONE
        _touch(stored, now_ms, "approval_failed", f"Rule {chunk.rule_name!r}: {reason}")
        return stored

    return mutate


def effect_operations(stored: StoredDraftChunk) -> list[MergeOperation]:
    """The merge operations that bring the policy in line with the chunk's pending effect."""
    chunk = stored.chunk
    if stored.effect == EFFECT_ADDING:
        return [add_rule_operation(chunk.rule_name, chunk.proposed_rule)]
    if stored.effect == EFFECT_REMOVING:
        if stored.HasField("applied_addition"):
            return undo_operations(addition_of(stored.applied_addition))
        landed = stored.applied_rule_name or chunk.rule_name
        return removal_operations(landed, chunk.proposed_rule)
    return []


def same_decision(read: StoredDraftChunk, fresh: StoredDraftChunk | None) -> bool:
    """``fresh`` still owes the effect ``read`` was read with: same effect, same decision
    (review_seq). A stale copy must not be applied once the chunk moved on (undone,
    re-approved, settled by someone else)."""
    return (
        fresh is not None
        and fresh.effect != EFFECT_NONE
        and fresh.effect == read.effect
        and fresh.review_seq == read.review_seq
    )


def applied_addition(addition: Addition) -> AppliedAddition:
    """The storage form of what a merge added."""
    stored = AppliedAddition(
        rule_name=addition.rule_name,
        created_rule=addition.created_rule,
        binaries=addition.binaries,
    )
    for host, port in addition.ports:
        stored.ports.add(host=host, port=port)
    return stored


def addition_of(stored: AppliedAddition) -> Addition:
    return Addition(
        stored.rule_name,
        stored.created_rule,
        tuple(stored.binaries),
        tuple((p.host, p.port) for p in stored.ports),
    )


def chunk_addition(stored: StoredDraftChunk, addition: Addition) -> ChunkAddition:
    """The note a revision carries of what one approval's merge added to it."""
    return ChunkAddition(
        chunk_id=stored.metadata.id,
        review_seq=stored.review_seq,
        addition=applied_addition(addition),
    )


def recorded_addition(
    stored: StoredDraftChunk, revisions: Iterable[internal_pb2.StoredPolicyRevision]
) -> tuple[AppliedAddition | None, bool]:
    """Search ``revisions`` (newest first, one page) for what an earlier attempt of this
    approval added, as noted on the revision it inserted. Returns (the addition, done).
    Done without an addition when a revision does not grant the rule or predates the
    decision: the approval's own insert cannot be older, so the policy granted the rule
    without it (undo then removes nothing)."""
    for revision in revisions:
        if revision.revision.version <= stored.decided_at_version:
            return None, True
        for note in revision.chunk_additions:
            if note.chunk_id == stored.metadata.id and note.review_seq == stored.review_seq:
                return note.addition, True
        if covering_rule(revision.revision.policy, stored.chunk.proposed_rule) is None:
            return None, True
    return None, False


def chunk_status(stored: StoredDraftChunk) -> str:
    """The status column of a stored chunk."""
    return stored.chunk.status


def select_for_approve_all(
    chunks: Sequence[StoredDraftChunk],
    approvals: Sequence[openshell_pb2.DraftChunkApproval],
    include_security_flagged: bool,
) -> tuple[list[tuple[StoredDraftChunk, str]], int]:
    """Which chunks ApproveAll approves (with the token to check), and how many it skips.

    With explicit approvals, exactly those chunks (a missing one is skipped); otherwise
    every settled pending chunk, security-flagged ones only when asked.
    """
    if approvals:
        by_id = {stored.chunk.id: stored for stored in chunks}
        chosen = [(by_id[a.chunk_id], a.review_token) for a in approvals if a.chunk_id in by_id]
        return chosen, len(approvals) - len(chosen)
    pending = [c for c in chunks if c.chunk.status == PENDING and c.effect == EFFECT_NONE]
    chosen = [(c, "") for c in pending if include_security_flagged or not c.chunk.security_notes]
    return chosen, len(pending) - len(chosen)
