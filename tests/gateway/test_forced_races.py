"""Cross-object races forced through the repositories' hook points, on SQLite and Postgres.

Each race runs one request up to a hook point (``tests/support/hooks.Gate``), runs the other
request to completion, then lets the first finish: the interleaving that could break a guard
happens on every run. Each race has companions that remove the guard it relies on and show
that the race's own check then fails, so none of these tests can pass by luck.

Guards:
* the provider fence after a sandbox starts referencing a provider (attach, create);
* DeleteProvider's ``delete_if`` at the version read before its reference scan;
* the state check in each chunk decision (approve refuses a rejected chunk, reject an
  approved one);
* the version index ``objects_version_uq``, which lets only one of two writers that built on
  revision n insert n+1 (the loser rebuilds on the winner's revision).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest

from shellgate.api import datamodel_pb2, internal_pb2, openshell_pb2, sandbox_pb2
from shellgate.reconcilers import drafts as chunk_rules
from shellgate.store.repositories import PROVIDER_TYPE
from tests.config.helpers import create_sandbox as create_ready_sandbox
from tests.config.helpers import policy, proposal
from tests.support.gateway import Running
from tests.support.hooks import Gate
from tests.support.unguard import (
    delete_at_current_version,
    fence_checks_existence_only,
    remove_fence,
)

P = openshell_pb2
Result = Any  # a response message, or the AioRpcError the call ended with
REFUSALS = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED)


async def outcome(call: Awaitable[Any]) -> Result:
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        return error


def ok(result: Result) -> bool:
    return not isinstance(result, grpc.aio.AioRpcError)


def refused_properly(result: Result) -> None:
    if not ok(result):
        assert result.code() in REFUSALS, result


# --- providers: a reference never outlives its provider ---------------------------------------


async def create_provider(gw: Running, name: str) -> None:
    message = datamodel_pb2.Provider(type="github", credentials={"TOKEN": "x"})
    message.metadata.name = name
    await gw.stub.CreateProvider(P.CreateProviderRequest(provider=message))


def attach(sandbox: str, provider: str) -> P.AttachSandboxProviderRequest:
    return P.AttachSandboxProviderRequest(sandbox=sandbox, provider=provider)


def delete(provider: str) -> P.DeleteProviderRequest:
    return P.DeleteProviderRequest(name=provider)


@dataclass
class ReferenceRace:
    reference: Result  # the attach's or create's answer
    deletion: Result  # DeleteProvider's answer
    referenced: bool  # the sandbox row names the provider afterwards
    provider_exists: bool


async def observe(gw: Running, reference: Result, deletion: Result) -> ReferenceRace:
    sandbox = await gw.gateway.repos.sandboxes.find("alpha", "default")
    assert sandbox is not None
    provider = await gw.gateway.repos.providers.find("gh", "default")
    return ReferenceRace(reference, deletion, "gh" in sandbox.spec.providers, provider is not None)


def check_no_dangling_reference(race: ReferenceRace) -> None:
    """The guarantee: never both answered OK, and never a reference to a deleted provider."""
    refused_properly(race.reference)
    refused_properly(race.deletion)
    assert not (ok(race.reference) and ok(race.deletion)), "both the reference and the delete"
    assert race.provider_exists or not race.referenced, "a sandbox references a deleted provider"


async def attach_inside_delete(gw: Running) -> ReferenceRace:
    """DeleteProvider scanned (no reference yet) and waits; an attach runs to completion."""
    await create_provider(gw, "gh")
    await create_ready_sandbox(gw, "alpha")
    gate = Gate()
    gw.gateway.repos.providers.hooks.after_reference_scan = gate
    deleting = await gate.hold(outcome(gw.stub.DeleteProvider(delete("gh"))))
    attached = await outcome(gw.stub.AttachSandboxProvider(attach("alpha", "gh")))
    assert ok(attached) and attached.attached, attached
    gate.release()
    return await observe(gw, attached, await deleting)


async def delete_inside_attach(gw: Running) -> ReferenceRace:
    """An attach checked the provider exists and waits before its sandbox write; the delete
    runs to completion."""
    await create_provider(gw, "gh")
    await create_ready_sandbox(gw, "alpha")
    gate = Gate()
    gw.gateway.repos.sandboxes.hooks.before_reference_write = gate
    attaching = await gate.hold(outcome(gw.stub.AttachSandboxProvider(attach("alpha", "gh"))))
    deleted = await outcome(gw.stub.DeleteProvider(delete("gh")))
    assert ok(deleted), deleted
    gate.release()
    return await observe(gw, await attaching, deleted)


async def create_inside_delete(gw: Running) -> ReferenceRace:
    """DeleteProvider scanned and waits; CreateSandbox naming the provider completes."""
    await create_provider(gw, "gh")
    gate = Gate()
    gw.gateway.repos.providers.hooks.after_reference_scan = gate
    deleting = await gate.hold(outcome(gw.stub.DeleteProvider(delete("gh"))))
    request = P.CreateSandboxRequest(name="alpha", spec=P.SandboxSpec(providers=["gh"]))
    created = await outcome(gw.stub.CreateSandbox(request))
    assert ok(created), created
    gate.release()
    return await observe(gw, created, await deleting)


REFERENCE_RACES = {
    "attach-inside-delete": attach_inside_delete,
    "delete-inside-attach": delete_inside_attach,
    "create-inside-delete": create_inside_delete,
}


@pytest.mark.parametrize("race", sorted(REFERENCE_RACES))
async def test_forced_reference_race_never_dangles(gw: Running, race: str) -> None:
    check_no_dangling_reference(await REFERENCE_RACES[race](gw))


# The guards, removed one at a time.


def without_fence_write(gw: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fence checks the provider exists but no longer moves its version."""
    fence_checks_existence_only(gw.gateway.repos.providers, PROVIDER_TYPE, monkeypatch)


def without_fence(gw: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """No fence at all: nothing checks the provider after the reference is written."""
    remove_fence(gw.gateway.repos.providers, monkeypatch)


def without_delete_version(gw: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """DeleteProvider deletes at whatever version the row has now, not the one it read
    before scanning."""
    delete_at_current_version(gw.gateway.repos.providers, PROVIDER_TYPE, monkeypatch)


Unguard = Callable[[Running, pytest.MonkeyPatch], None]
REFERENCE_COMPANIONS: dict[str, tuple[str, Unguard]] = {
    "attach-inside-delete/no-fence-write": ("attach-inside-delete", without_fence_write),
    "attach-inside-delete/no-delete-version": ("attach-inside-delete", without_delete_version),
    "delete-inside-attach/no-fence": ("delete-inside-attach", without_fence),
    "create-inside-delete/no-fence-write": ("create-inside-delete", without_fence_write),
    "create-inside-delete/no-delete-version": ("create-inside-delete", without_delete_version),
}


@pytest.mark.parametrize("companion", sorted(REFERENCE_COMPANIONS))
async def test_reference_race_fails_without_its_guard(
    gw: Running, monkeypatch: pytest.MonkeyPatch, companion: str
) -> None:
    race, unguard = REFERENCE_COMPANIONS[companion]
    unguard(gw, monkeypatch)
    result = await REFERENCE_RACES[race](gw)
    with pytest.raises(AssertionError):
        check_no_dangling_reference(result)


# --- draft chunks: of approve and reject on one chunk, exactly one wins -----------------------


@dataclass
class DecisionRace:
    approval: Result
    rejection: Result
    status: str  # the chunk's status afterwards
    rule_in_policy: bool


async def seeded_chunk(gw: Running) -> tuple[str, str]:
    await create_ready_sandbox(gw, "alpha", policy())
    chunk = proposal("github.com")
    submitted = await gw.stub.SubmitPolicyAnalysis(
        P.SubmitPolicyAnalysisRequest(name="alpha", proposed_chunks=[chunk])
    )
    return submitted.accepted_chunk_ids[0], chunk.rule_name


async def observe_decisions(
    gw: Running, chunk_id: str, rule: str, approval: Result, rejection: Result
) -> DecisionRace:
    stored = await gw.gateway.repos.chunks.get(chunk_id)
    assert stored is not None
    config = await gw.stub.GetSandboxConfig(sandbox_pb2.GetSandboxConfigRequest(name="alpha"))
    return DecisionRace(
        approval, rejection, stored.chunk.status, rule in config.policy.network_policies
    )


def check_one_decision_wins(race: DecisionRace) -> None:
    """Exactly one of the two answered OK; the chunk and the policy reflect only it."""
    assert [ok(race.approval), ok(race.rejection)].count(True) == 1, "not exactly one winner"
    loser = race.rejection if ok(race.approval) else race.approval
    assert loser.code() == grpc.StatusCode.FAILED_PRECONDITION, loser
    winner = "approved" if ok(race.approval) else "rejected"
    assert race.status == winner
    assert race.rule_in_policy == (winner == "approved")


def approve_request(chunk_id: str) -> P.ApproveDraftChunkRequest:
    return P.ApproveDraftChunkRequest(sandbox="alpha", chunk_id=chunk_id)


def reject_request(chunk_id: str) -> P.RejectDraftChunkRequest:
    return P.RejectDraftChunkRequest(sandbox="alpha", chunk_id=chunk_id, reason="no")


async def reject_inside_approve(gw: Running) -> DecisionRace:
    """An approval read the pending chunk and waits before its CAS; a rejection completes."""
    chunk_id, rule = await seeded_chunk(gw)
    gate = Gate(chunk_id)
    gw.gateway.repos.chunks.hooks.before_decision = gate
    approving = await gate.hold(outcome(gw.stub.ApproveDraftChunk(approve_request(chunk_id))))
    rejected = await outcome(gw.stub.RejectDraftChunk(reject_request(chunk_id)))
    assert ok(rejected), rejected
    gate.release()
    return await observe_decisions(gw, chunk_id, rule, await approving, rejected)


async def approve_inside_reject(gw: Running) -> DecisionRace:
    """A rejection read the pending chunk and waits before its CAS; an approval completes."""
    chunk_id, rule = await seeded_chunk(gw)
    gate = Gate(chunk_id)
    gw.gateway.repos.chunks.hooks.before_decision = gate
    rejecting = await gate.hold(outcome(gw.stub.RejectDraftChunk(reject_request(chunk_id))))
    approved = await outcome(gw.stub.ApproveDraftChunk(approve_request(chunk_id)))
    assert ok(approved), approved
    gate.release()
    return await observe_decisions(gw, chunk_id, rule, approved, await rejecting)


DECISION_RACES = {
    "reject-inside-approve": reject_inside_approve,
    "approve-inside-reject": approve_inside_reject,
}


@pytest.mark.parametrize("race", sorted(DECISION_RACES))
async def test_forced_decision_race_has_one_winner(gw: Running, race: str) -> None:
    check_one_decision_wins(await DECISION_RACES[race](gw))


def _unchecked(decision: Callable[..., chunk_rules.ChunkMutation]) -> Callable[..., Any]:
    """``decision`` as if every chunk it reads were pending and settled: its state check
    can no longer refuse."""

    def build(*args: Any, **kwargs: Any) -> chunk_rules.ChunkMutation:
        mutate = decision(*args, **kwargs)

        def forced(stored: internal_pb2.StoredDraftChunk) -> internal_pb2.StoredDraftChunk:
            stored.chunk.status = chunk_rules.PENDING
            stored.effect = chunk_rules.EFFECT_NONE
            return mutate(stored)

        return forced

    return build


DECISION_COMPANIONS = {
    "reject-inside-approve/no-approve-state-check": ("reject-inside-approve", "approve"),
    "approve-inside-reject/no-reject-state-check": ("approve-inside-reject", "reject"),
}


@pytest.mark.parametrize("companion", sorted(DECISION_COMPANIONS))
async def test_decision_race_fails_without_its_state_check(
    gw: Running, monkeypatch: pytest.MonkeyPatch, companion: str
) -> None:
    race, decision = DECISION_COMPANIONS[companion]
    monkeypatch.setattr(chunk_rules, decision, _unchecked(getattr(chunk_rules, decision)))
    result = await DECISION_RACES[race](gw)
    with pytest.raises(AssertionError):
        check_one_decision_wins(result)


# --- policy revisions: two merges on one sandbox keep both rules ------------------------------


@dataclass
class MergeRace:
    first: Result
    second: Result
    latest_rules: set[str]
    versions: list[int]


def merge_request(rule_name: str) -> P.UpdateConfigRequest:
    chunk = proposal(f"{rule_name}.example.com")
    operation = P.PolicyMergeOperation()
    operation.add_rule.rule_name = rule_name
    operation.add_rule.rule.CopyFrom(chunk.proposed_rule)
    return P.UpdateConfigRequest(sandbox="alpha", merge_operations=[operation])


async def merge_inside_merge(gw: Running) -> MergeRace:
    """A merge built its revision on version n and waits before inserting n+1; another
    merge inserts n+1 first."""
    created = await create_ready_sandbox(gw, "alpha", policy())
    scope = created.metadata.id
    gate = Gate(scope)
    gw.gateway.repos.revisions.hooks.before_insert = gate
    first = await gate.hold(outcome(gw.stub.UpdateConfig(merge_request("first"))))
    second = await outcome(gw.stub.UpdateConfig(merge_request("second")))
    assert ok(second), second
    gate.release()
    first_result = await first
    rows = await gw.gateway.repos.revisions.below(scope, None, 100)
    latest = await gw.gateway.repos.revisions.latest(scope)
    assert latest is not None
    rules = set(latest.revision.policy.network_policies)
    return MergeRace(first_result, second, rules, [r.revision.version for r in rows])


def check_merges_both_kept(race: MergeRace) -> None:
    """Every merge that answered OK is in the latest revision; versions are never shared."""
    refused_properly(race.first)
    acknowledged = {name for name, r in (("first", race.first), ("second", race.second)) if ok(r)}
    assert acknowledged <= race.latest_rules, f"lost {acknowledged - race.latest_rules}"
    assert len(race.versions) == len(set(race.versions)), f"versions shared: {race.versions}"


async def test_forced_merge_race_keeps_both_rules(gw: Running) -> None:
    check_merges_both_kept(await merge_inside_merge(gw))


async def test_merge_race_fails_without_the_version_index(gw: Running, store_url: str) -> None:
    """Without ``objects_version_uq`` nothing stops the second insert of version n+1."""
    await drop_version_index(store_url)
    result = await merge_inside_merge(gw)
    with pytest.raises(AssertionError):
        check_merges_both_kept(result)


async def drop_version_index(store_url: str) -> None:
    statement = "DROP INDEX objects_version_uq"
    if store_url.startswith("sqlite"):
        with sqlite3.connect(store_url.removeprefix("sqlite:///")) as connection:
            connection.execute(statement)
        return
    async with await psycopg.AsyncConnection.connect(store_url, autocommit=True) as connection:
        await connection.execute(statement)
