"""Regressions from review: late status reports and a clear racing a set of the global policy."""

from __future__ import annotations

from shellgate.api import openshell_pb2 as P
from shellgate.controller.service import policies
from shellgate.reconcilers.policy import (
    ACTIVE_WORDS,
    GLOBAL_SCOPE,
    LOADED,
    revision_status,
    supersede,
    with_default_identity,
)
from shellgate.reconcilers.settings import GlobalPolicyChange
from tests.config.helpers import create_sandbox, policy, rule
from tests.support.gateway import Running


async def test_late_loaded_report_of_a_superseded_revision_changes_nothing(gw: Running) -> None:
    await create_sandbox(gw, "alpha", policy())
    sandbox = await gw.gateway.store.get_message_by_name(P.Sandbox, "alpha")
    assert sandbox is not None
    sandbox_id = sandbox.metadata.id

    async def push(host: str) -> int:
        request = P.UpdateConfigRequest(sandbox="alpha", policy=policy(r=rule(host)))
        return (await gw.stub.UpdateConfig(request)).version

    async def report(version: int) -> None:
        await gw.stub.ReportPolicyStatus(
            P.ReportPolicyStatusRequest(sandbox_id=sandbox_id, version=version, status=LOADED)
        )

    v1 = await push("a.example.com")
    await report(v1)
    v2 = await push("b.example.com")
    await push("c.example.com")  # supersedes the pending v2
    await report(v2)  # late: v2 was superseded before it loaded
    rows = await gw.gateway.store.list_versions("sandbox_policy", sandbox_id, limit=10)
    assert {r.version: r.status for r in rows}[v1] == "loaded"
    current = await gw.gateway.store.get_message(P.Sandbox, sandbox_id)
    assert current is not None and current.status.current_policy_version == v1


async def test_clear_racing_a_set_keeps_the_new_global_revision_active(gw: Running) -> None:
    g = gw.gateway
    first = with_default_identity(policy(r=rule("a.example.com")))
    second = with_default_identity(policy(r=rule("b.example.com")))
    await policies.set_global_policy(g, first)
    # A, step 1: insert the new global revision (loaded).
    revision = await policies.commit_revision(
        g,
        GLOBAL_SCOPE,
        "",
        lambda _latest: second,
        status=LOADED,
        supersedes=ACTIVE_WORDS,
        reusable=lambda latest: latest.revision.status == LOADED,
    )
    # C, step 1: clear the pointer (it still names the first revision).
    clear = GlobalPolicyChange(None)
    blank = g.repos.settings.blank_gateway()
    await g.repos.settings.update(blank, clear)
    # A, step 2: point at the new revision (the pointer is empty, so it moves).
    point = GlobalPolicyChange(second, revision.revision.version, revision.revision.policy_hash)
    await g.repos.settings.update(blank, point)
    # C, step 2: retire what it cleared, and nothing newer.
    await g.repos.revisions.supersede_older(
        GLOBAL_SCOPE, clear.cleared_version + 1, ACTIVE_WORDS, supersede, revision_status
    )
    settings = await g.repos.settings.load_gateway()
    assert settings is not None
    active = await g.repos.revisions.at(GLOBAL_SCOPE, settings.global_policy.version)
    assert active is not None
    assert active.revision.status != P.POLICY_STATUS_SUPERSEDED
