"""Draft-policy chunks: submit, review, decide, undo, clear, history; on SQLite and Postgres.

Includes the crash-safety proof of approvals (docs/config.md): the handler's steps are run
one by one and "crash" in between; the draft reconcile loop (on any replica) completes the
change exactly once, and reads never write. And the race the issue names: approve and
reject of one chunk from two replicas, 100 times, exactly one winning each time, the chunk's
state matching the policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from shellgate.api import internal_pb2
from shellgate.controller import draft_effects as drafts
from shellgate.reconcilers import drafts as rules
from shellgate.reconcilers import policy as policy_rules
from shellgate.reconcilers.errors import InvalidArgument
from shellgate.reconcilers.policy_merge import ports_of
from shellgate.store import Store, repositories
from tests.config.helpers import (
    P,
    code_of,
    config,
    create_sandbox,
    current_state,
    failure,
    policy,
    proposal,
    rule,
)
from tests.support.fake_driver import FakeDriver
from tests.support.gateway import Running, running_gateway


def submit(name: str, *chunks: P.PolicyChunk) -> P.SubmitPolicyAnalysisRequest:
    return P.SubmitPolicyAnalysisRequest(name=name, proposed_chunks=chunks)


async def chunks(gw: Running, name: str = "alpha", status: str = "") -> list[P.PolicyChunk]:
    request = P.GetDraftPolicyRequest(sandbox=name, status_filter=status)
    return list((await gw.stub.GetDraftPolicy(request)).chunks)


async def stored_chunk(gw: Running, chunk_id: str) -> internal_pb2.StoredDraftChunk:
    found = await gw.gateway.store.get_message(internal_pb2.StoredDraftChunk, chunk_id)
    assert found is not None
    return found


async def rules_in_policy(gw: Running, name: str = "alpha") -> set[str]:
    return set((await config(gw, name)).policy.network_policies)


async def revision_count(gw: Running, sandbox_id: str) -> int:
    return len(await gw.gateway.store.list_versions("sandbox_policy", sandbox_id, limit=1000))


async def settled_by_the_loop(
    gw: Running, chunk_id: str, timeout: float = 15.0
) -> internal_pb2.StoredDraftChunk:
    """Poll the store until the draft loop has finished the chunk's decision."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = await stored_chunk(gw, chunk_id)
        if found.effect == rules.EFFECT_NONE:
            return found
        if loop.time() > deadline:
            raise AssertionError(f"chunk {chunk_id} still owes {found.effect} after {timeout} s")
        await asyncio.sleep(0.05)


def approve(chunk_id: str, name: str = "alpha", token: str = "") -> P.ApproveDraftChunkRequest:
    return P.ApproveDraftChunkRequest(sandbox=name, chunk_id=chunk_id, review_token=token)


def reject(chunk_id: str, name: str = "alpha", reason: str = "no") -> P.RejectDraftChunkRequest:
    return P.RejectDraftChunkRequest(sandbox=name, chunk_id=chunk_id, reason=reason)


@pytest.fixture
async def seeded(gw: Running) -> Running:
    await create_sandbox(gw, "alpha", policy())
    return gw


@pytest.fixture
async def replica_b(second_store: Store) -> AsyncIterator[Running]:
    """A second gateway on the same database, as another replica would be."""
    async with running_gateway(second_store, FakeDriver()) as running:
        yield running


# --- submit and read --------------------------------------------------------------------------


async def test_submit_accepts_valid_chunks_and_folds_repeats(seeded: Running) -> None:
    first = await seeded.stub.SubmitPolicyAnalysis(
        submit("alpha", proposal("github.com"), P.PolicyChunk(rule_name="x"), proposal("pypi.org"))
    )
    assert (first.accepted_chunks, first.rejected_chunks) == (2, 1)
    assert "proposed_rule" in first.rejection_reasons[0]
    again = await seeded.stub.SubmitPolicyAnalysis(submit("alpha", proposal("github.com")))
    assert again.accepted_chunk_ids[0] == first.accepted_chunk_ids[0]
    listed = await seeded.stub.GetDraftPolicy(P.GetDraftPolicyRequest(sandbox="alpha"))
    assert len(listed.chunks) == 2 and listed.draft_version == 1
    github = next(c for c in listed.chunks if c.id == first.accepted_chunk_ids[0])
    assert github.hit_count == 2 and github.status == "pending" and github.review_token
    bad = [proposal("*.com"), proposal("localhost", 80)]
    refused = await seeded.stub.SubmitPolicyAnalysis(submit("alpha", *bad))
    assert refused.rejected_chunks == 2


async def test_status_filter(seeded: Running) -> None:
    ids = (
        await seeded.stub.SubmitPolicyAnalysis(
            submit("alpha", proposal("a.example.com"), proposal("b.example.com"))
        )
    ).accepted_chunk_ids
    await seeded.stub.RejectDraftChunk(reject(ids[0]))
    assert [c.id for c in await chunks(seeded, status="rejected")] == [ids[0]]
    assert [c.id for c in await chunks(seeded, status="pending")] == [ids[1]]
    bad = P.GetDraftPolicyRequest(sandbox="alpha", status_filter="maybe")
    assert await code_of(seeded.stub.GetDraftPolicy(bad)) == grpc.StatusCode.INVALID_ARGUMENT


# --- decisions --------------------------------------------------------------------------------


async def test_approve_merges_the_rule_once(seeded: Running) -> None:
    [chunk_id] = (
        await seeded.stub.SubmitPolicyAnalysis(submit("alpha", proposal("github.com")))
    ).accepted_chunk_ids
    response = await seeded.stub.ApproveDraftChunk(approve(chunk_id))
    assert response.policy_version == 1 and response.policy_hash
    assert (await rules_in_policy(seeded)) == {"allow_github_com_443"}
    stored = await stored_chunk(seeded, chunk_id)
    assert (stored.chunk.status, stored.effect, stored.applied_version) == (
        "approved",
        rules.EFFECT_NONE,
        1,
    )
    error = await failure(seeded.stub.ApproveDraftChunk(approve(chunk_id)))
    assert (
        error.code() == grpc.StatusCode.FAILED_PRECONDITION and current_state(error) == "approved"
    )
    error = await failure(seeded.stub.RejectDraftChunk(reject(chunk_id)))
    assert (
        error.code() == grpc.StatusCode.FAILED_PRECONDITION and current_state(error) == "approved"
    )


async def test_reject_then_approve_needs_the_review_token(seeded: Running) -> None:
    [chunk_id] = (
        await seeded.stub.SubmitPolicyAnalysis(submit("alpha", proposal("github.com")))
    ).accepted_chunk_ids
    stale = (await chunks(seeded))[0].review_token
    await seeded.stub.RejectDraftChunk(reject(chunk_id, reason="too broad"))
    [rejected] = await chunks(seeded)
    assert rejected.status == "rejected" and rejected.rejection_reason == "too broad"
    error = await failure(seeded.stub.ApproveDraftChunk(approve(chunk_id)))
    assert current_state(error) == "rejected"
    error = await failure(seeded.stub.ApproveDraftChunk(approve(chunk_id, token=stale)))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    await seeded.stub.ApproveDraftChunk(approve(chunk_id, token=rejected.review_token))
    assert "allow_github_com_443" in await rules_in_policy(seeded)


async def test_undo_takes_the_rule_out_and_edit_works_on_pending(seeded: Running) -> None:
    [chunk_id] = (
        await seeded.stub.SubmitPolicyAnalysis(submit("alpha", proposal("github.com")))
    ).accepted_chunk_ids
    edited = rule("github.com", binary="/usr/bin/git")
    await seeded.stub.EditDraftChunk(
        P.EditDraftChunkRequest(sandbox="alpha", chunk_id=chunk_id, proposed_rule=edited)
    )
    await seeded.stub.ApproveDraftChunk(approve(chunk_id))
    binaries = (
        (await config(seeded, "alpha")).policy.network_policies["allow_github_com_443"].binaries
    )
    assert [b.path for b in binaries] == ["/usr/bin/git"]
    again = P.EditDraftChunkRequest(sandbox="alpha", chunk_id=chunk_id, proposed_rule=edited)
    assert await code_of(seeded.stub.EditDraftChunk(again)) == grpc.StatusCode.FAILED_PRECONDITION
    undone = await seeded.stub.UndoDraftChunk(
        P.UndoDraftChunkRequest(sandbox="alpha", chunk_id=chunk_id)
    )
    assert undone.policy_version == 2
    assert await rules_in_policy(seeded) == set()
    assert (await chunks(seeded))[0].status == "pending"
    second = P.UndoDraftChunkRequest(sandbox="alpha", chunk_id=chunk_id)
    assert await code_of(seeded.stub.UndoDraftChunk(second)) == grpc.StatusCode.FAILED_PRECONDITION


async def test_approve_all_skips_flagged_chunks_unless_asked(seeded: Running) -> None:
    submitted = await seeded.stub.SubmitPolicyAnalysis(
        submit(
            "alpha",
            proposal("a.example.com"),
            proposal("db.example.com", 5432),
            proposal("b.example.com"),
        )
    )
    assert submitted.accepted_chunks == 3
    response = await seeded.stub.ApproveAllDraftChunks(
        P.ApproveAllDraftChunksRequest(sandbox="alpha")
    )
    assert (response.chunks_approved, response.chunks_skipped, response.policy_version) == (2, 1, 1)
    flagged = await seeded.stub.ApproveAllDraftChunks(
        P.ApproveAllDraftChunksRequest(sandbox="alpha", include_security_flagged=True)
    )
    assert (flagged.chunks_approved, flagged.policy_version) == (1, 2)
    assert len(await rules_in_policy(seeded)) == 3
    nothing = P.ApproveAllDraftChunksRequest(sandbox="alpha")
    assert (
        await code_of(seeded.stub.ApproveAllDraftChunks(nothing))
        == grpc.StatusCode.FAILED_PRECONDITION
    )


async def test_clear_removes_pending_only_and_history_tells_the_story(seeded: Running) -> None:
    ids = (
        await seeded.stub.SubmitPolicyAnalysis(
            submit(
                "alpha",
                proposal("a.example.com"),
                proposal("b.example.com"),
                proposal("c.example.com"),
            )
        )
    ).accepted_chunk_ids
    await seeded.stub.ApproveDraftChunk(approve(ids[0]))
    await seeded.stub.RejectDraftChunk(reject(ids[1]))
    cleared = await seeded.stub.ClearDraftChunks(P.ClearDraftChunksRequest(sandbox="alpha"))
    assert cleared.chunks_cleared == 1
    assert sorted(c.id for c in await chunks(seeded)) == sorted(ids[:2])
    history = await seeded.stub.GetDraftHistory(P.GetDraftHistoryRequest(sandbox="alpha"))
    events = [(e.chunk_id, e.event_type) for e in history.entries]
    assert (ids[0], "proposed") in events and (ids[0], "approved") in events
    assert (ids[1], "rejected") in events and all(c != ids[2] for c, _ in events)
    times = [e.event_time.ToMilliseconds() for e in history.entries]
    assert times == sorted(times)


async def test_decisions_need_a_known_chunk_of_that_sandbox(seeded: Running) -> None:
    await create_sandbox(seeded, "beta", policy())
    [chunk_id] = (
        await seeded.stub.SubmitPolicyAnalysis(submit("beta", proposal("a.example.com")))
    ).accepted_chunk_ids
    assert (
        await code_of(seeded.stub.ApproveDraftChunk(approve(chunk_id))) == grpc.StatusCode.NOT_FOUND
    )
    assert await code_of(seeded.stub.RejectDraftChunk(reject("nope"))) == grpc.StatusCode.NOT_FOUND
    assert (
        await code_of(seeded.stub.RejectDraftChunk(reject(""))) == grpc.StatusCode.INVALID_ARGUMENT
    )


async def test_a_global_policy_blocks_approvals(seeded: Running) -> None:
    [chunk_id] = (
        await seeded.stub.SubmitPolicyAnalysis(submit("alpha", proposal("a.example.com")))
    ).accepted_chunk_ids
    await seeded.stub.UpdateConfig(P.UpdateConfigRequest(policy=policy(), **{"global": True}))
    error = await failure(seeded.stub.ApproveDraftChunk(approve(chunk_id)))
    assert current_state(error) == "POLICY_MANAGED_GLOBALLY"
    assert (await stored_chunk(seeded, chunk_id)).chunk.status == "pending"


# --- crash safety -----------------------------------------------------------------------------


async def _sandbox(gw: Running) -> P.Sandbox:
    found = await gw.gateway.store.get_message_by_name(P.Sandbox, "alpha")
    assert found is not None
    return found


async def test_crash_after_the_decision_is_completed_by_another_replica(
    seeded: Running, replica_b: Running
) -> None:
    [chunk_id] = (
        await seeded.stub.SubmitPolicyAnalysis(submit("alpha", proposal("github.com")))
    ).accepted_chunk_ids
    sandbox = await _sandbox(seeded)
    # Replica A writes step one, then "crashes": no revision, no settle.
    await drafts.decide_chunk(seeded.gateway, chunk_id, rules.approve("", 1))
    half = await stored_chunk(seeded, chunk_id)
    assert (half.chunk.status, half.effect) == ("approved", rules.EFFECT_ADDING)
    assert await revision_count(seeded, sandbox.metadata.id) == 0
    # The draft loop (of either replica) finishes the approval.
    await settled_by_the_loop(replica_b, chunk_id)
    [seen] = await chunks(replica_b)
    assert seen.status == "approved"
    done = await stored_chunk(seeded, chunk_id)
    assert (done.effect, done.applied_version) == (rules.EFFECT_NONE, 1)
    assert "allow_github_com_443" in await rules_in_policy(replica_b)
    await chunks(seeded)  # another read changes nothing more
    assert await revision_count(seeded, sandbox.metadata.id) == 1


async def test_crash_after_the_revision_is_settled_without_a_second_revision(
    seeded: Running, replica_b: Running
) -> None:
    [chunk_id] = (
        await seeded.stub.SubmitPolicyAnalysis(submit("alpha", proposal("github.com")))
    ).accepted_chunk_ids
    sandbox = await _sandbox(seeded)
    decided = await drafts.decide_chunk(seeded.gateway, chunk_id, rules.approve("", 1))
    revision, _ = await drafts.commit_effects(seeded.gateway, sandbox, [decided])
    assert revision is not None and revision.revision.version == 1
    # "Crash" before settle: the chunk still owes the policy a change it already holds.
    assert (await stored_chunk(seeded, chunk_id)).effect == rules.EFFECT_ADDING
    await settled_by_the_loop(replica_b, chunk_id)
    history = await replica_b.stub.GetDraftHistory(P.GetDraftHistoryRequest(sandbox="alpha"))
    assert history.entries
    done = await stored_chunk(seeded, chunk_id)
    assert (done.effect, done.applied_version) == (rules.EFFECT_NONE, 1)
    assert await revision_count(seeded, sandbox.metadata.id) == 1


async def test_crash_during_undo_is_completed(seeded: Running, replica_b: Running) -> None:
    [chunk_id] = (
        await seeded.stub.SubmitPolicyAnalysis(submit("alpha", proposal("github.com")))
    ).accepted_chunk_ids
    await seeded.stub.ApproveDraftChunk(approve(chunk_id))
    await drafts.decide_chunk(seeded.gateway, chunk_id, rules.undo(2))  # then crash
    assert "allow_github_com_443" in await rules_in_policy(seeded)
    await settled_by_the_loop(replica_b, chunk_id)
    [seen] = await chunks(replica_b)
    assert seen.status == "pending"
    assert await rules_in_policy(replica_b) == set()
    assert (await stored_chunk(seeded, chunk_id)).effect == rules.EFFECT_NONE


async def test_an_approval_that_no_longer_fits_is_withdrawn(
    seeded: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The policy moved on between the decision and the merge so that the merged policy no
    longer validates: the decision is taken back (chunk pending, application_error set)."""
    [chunk_id] = (
        await seeded.stub.SubmitPolicyAnalysis(submit("alpha", proposal("github.com")))
    ).accepted_chunk_ids
    sandbox = await _sandbox(seeded)
    await drafts.decide_chunk(seeded.gateway, chunk_id, rules.approve("", 1))

    def refuse(_policy: object, field: str = "policy") -> None:
        raise InvalidArgument.single(field, "policy too large now")

    monkeypatch.setattr(policy_rules, "require_valid_policy", refuse)
    await settled_by_the_loop(seeded, chunk_id)
    after = await stored_chunk(seeded, chunk_id)
    assert (after.chunk.status, after.effect) == ("pending", rules.EFFECT_NONE)
    assert after.chunk.application_error
    assert await revision_count(seeded, sandbox.metadata.id) == 0


# --- the race ---------------------------------------------------------------------------------


ROUNDS = 100


async def test_concurrent_approve_and_reject_exactly_one_wins(
    seeded: Running, replica_b: Running
) -> None:
    replicas = (seeded, replica_b)
    submitted = await seeded.stub.SubmitPolicyAnalysis(
        submit("alpha", *(proposal(f"h{n}.example.com") for n in range(ROUNDS)))
    )
    ids = list(submitted.accepted_chunk_ids)
    assert len(ids) == ROUNDS
    winners: dict[str, str] = {}
    for n, chunk_id in enumerate(ids):
        approver, rejecter = replicas[n % 2], replicas[(n + 1) % 2]
        results = await asyncio.gather(
            approver.stub.ApproveDraftChunk(approve(chunk_id)),
            rejecter.stub.RejectDraftChunk(reject(chunk_id)),
            return_exceptions=True,
        )
        errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
        assert len(errors) == 1, results
        assert errors[0].code() == grpc.StatusCode.FAILED_PRECONDITION
        winner = "rejected" if isinstance(results[0], BaseException) else "approved"
        assert current_state(errors[0]) == winner
        winners[chunk_id] = winner
    final = await chunks(seeded)
    in_policy = await rules_in_policy(seeded)
    for chunk in final:
        assert chunk.status == winners[chunk.id]
        assert (chunk.rule_name in in_policy) == (chunk.status == "approved")
    # Which side wins each round is the scheduler's choice; both orders are forced
    # deterministically in tests/gateway/test_forced_races.py.


# --- stale recoveries and what undo takes out ----------------------------------------------------


async def test_a_stale_recovery_does_not_re_add_an_undone_rule(seeded: Running) -> None:
    """A replica read the chunk while approved (ADDING) and stalled; meanwhile the approval
    finished and was undone. Resuming with its stale copy must not put the rule back."""
    [chunk_id] = (
        await seeded.stub.SubmitPolicyAnalysis(submit("alpha", proposal("github.com")))
    ).accepted_chunk_ids
    sandbox = await _sandbox(seeded)
    stale_copy = await drafts.decide_chunk(seeded.gateway, chunk_id, rules.approve("", 1))
    await drafts.apply_effects(seeded.gateway, sandbox, [stale_copy])  # the handler finishes
    await seeded.stub.UndoDraftChunk(P.UndoDraftChunkRequest(sandbox="alpha", chunk_id=chunk_id))
    assert await rules_in_policy(seeded) == set()
    versions = await revision_count(seeded, sandbox.metadata.id)
    await drafts.apply_effects(seeded.gateway, sandbox, [stale_copy])  # the slow replica
    after = await stored_chunk(seeded, chunk_id)
    assert (after.chunk.status, after.effect) == ("pending", rules.EFFECT_NONE)
    assert await rules_in_policy(seeded) == set()
    assert await revision_count(seeded, sandbox.metadata.id) == versions
    # Re-approved since: the stale copy neither applies nor settles the new decision.
    await seeded.stub.ApproveDraftChunk(approve(chunk_id))
    await seeded.stub.UndoDraftChunk(P.UndoDraftChunkRequest(sandbox="alpha", chunk_id=chunk_id))
    redecided = await drafts.decide_chunk(seeded.gateway, chunk_id, rules.approve("", 4))
    await drafts.clear_effects(seeded.gateway, [(stale_copy, None)], None)
    assert (await stored_chunk(seeded, chunk_id)).effect == rules.EFFECT_ADDING
    await drafts.apply_effects(seeded.gateway, sandbox, [redecided])
    assert "allow_github_com_443" in await rules_in_policy(seeded)


async def test_undo_of_an_approval_the_policy_already_granted_keeps_the_users_rule(
    gw: Running,
) -> None:
    await create_sandbox(gw, "alpha", policy(mine=rule("github.com", name="mine")))
    [chunk_id] = (
        await gw.stub.SubmitPolicyAnalysis(submit("alpha", proposal("github.com")))
    ).accepted_chunk_ids
    before = (await config(gw, "alpha")).policy
    await gw.stub.ApproveDraftChunk(approve(chunk_id))
    assert (await config(gw, "alpha")).policy == before
    settled = await stored_chunk(gw, chunk_id)
    assert settled.applied_addition.rule_name == "mine"
    assert not settled.applied_addition.binaries and not settled.applied_addition.ports
    await gw.stub.UndoDraftChunk(P.UndoDraftChunkRequest(sandbox="alpha", chunk_id=chunk_id))
    assert (await config(gw, "alpha")).policy == before
    assert [c.status for c in await chunks(gw)] == ["pending"]


async def test_undo_of_a_partial_overlap_removes_only_what_the_approval_added(
    gw: Running,
) -> None:
    await create_sandbox(gw, "alpha", policy(mine=rule("github.com", name="mine")))
    wider = proposal("github.com", binary="/usr/bin/git")
    wider.proposed_rule.endpoints[0].ports.extend([443, 8443])
    [chunk_id] = (await gw.stub.SubmitPolicyAnalysis(submit("alpha", wider))).accepted_chunk_ids
    before = (await config(gw, "alpha")).policy
    await gw.stub.ApproveDraftChunk(approve(chunk_id))
    merged = (await config(gw, "alpha")).policy.network_policies["mine"]
    assert [b.path for b in merged.binaries] == ["/usr/bin/curl", "/usr/bin/git"]
    assert list(merged.endpoints[0].ports) == [443, 8443]
    await gw.stub.UndoDraftChunk(P.UndoDraftChunkRequest(sandbox="alpha", chunk_id=chunk_id))
    after = (await config(gw, "alpha")).policy.network_policies["mine"]
    assert [b.path for b in after.binaries] == ["/usr/bin/curl"]
    assert ports_of(after.endpoints[0]) == ports_of(before.network_policies["mine"].endpoints[0])


async def test_undo_after_a_crash_between_revision_and_settle_removes_the_rule(
    seeded: Running, replica_b: Running
) -> None:
    """The recovery finds the rule already merged (a no-op merge) and must still record what
    the crashed attempt added, from the note on the revision it inserted."""
    [chunk_id] = (
        await seeded.stub.SubmitPolicyAnalysis(submit("alpha", proposal("github.com")))
    ).accepted_chunk_ids
    sandbox = await _sandbox(seeded)
    decided = await drafts.decide_chunk(seeded.gateway, chunk_id, rules.approve("", 1))
    await drafts.commit_effects(seeded.gateway, sandbox, [decided])  # then crash
    await settled_by_the_loop(replica_b, chunk_id)
    settled = await stored_chunk(seeded, chunk_id)
    assert settled.effect == rules.EFFECT_NONE and settled.applied_addition.created_rule
    await replica_b.stub.UndoDraftChunk(P.UndoDraftChunkRequest(sandbox="alpha", chunk_id=chunk_id))
    assert await rules_in_policy(seeded) == set()


# --- reads never write -----------------------------------------------------------------------


async def all_versions(gw: Running) -> dict[tuple[str, str], int]:
    """Every row's resource_version, for every object type the draft RPCs touch."""
    versions: dict[tuple[str, str], int] = {}
    for object_type in (
        "sandbox",
        repositories.CHUNK_TYPE,
        repositories.REVISION_TYPE,
        repositories.SANDBOX_SETTINGS_TYPE,
        repositories.GATEWAY_SETTINGS_TYPE,
    ):
        token = ""
        while True:
            page = await gw.gateway.store.list(
                object_type, workspace=None, limit=500, page_token=token
            )
            for record in page.records:
                versions[(object_type, record.id)] = record.resource_version
            token = page.next_page_token
            if not token:
                break
    return versions


async def test_draft_reads_never_write_even_with_a_decision_half_done(seeded: Running) -> None:
    await seeded.loops.stop()  # no loop may finish it while we read
    submitted = await seeded.stub.SubmitPolicyAnalysis(
        submit("alpha", proposal("github.com"), proposal("gitlab.com"))
    )
    done_id, half_id = submitted.accepted_chunk_ids
    await seeded.stub.ApproveDraftChunk(approve(done_id))
    await drafts.decide_chunk(seeded.gateway, half_id, rules.approve("", 1))  # then "crash"
    before = await all_versions(seeded)
    assert (repositories.CHUNK_TYPE, half_id) in before
    for _ in range(3):
        await seeded.stub.GetDraftPolicy(P.GetDraftPolicyRequest(sandbox="alpha"))
        await seeded.stub.GetDraftPolicy(
            P.GetDraftPolicyRequest(sandbox="alpha", status_filter="approved")
        )
        await seeded.stub.GetDraftHistory(P.GetDraftHistoryRequest(sandbox="alpha"))
    assert await all_versions(seeded) == before
    assert (await stored_chunk(seeded, half_id)).effect == rules.EFFECT_ADDING
