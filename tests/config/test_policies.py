"""Policy revisions through UpdateConfig, ListSandboxPolicies, GetSandboxPolicyStatus and
ReportPolicyStatus, on SQLite and Postgres.

Mirrors the reference's backfill tests (correct version, stale version, three concurrent
stale writers) and its policy-revision store tests (latest, by version, status and latest
loaded, failed with an error, supersede older, newest first, isolation between sandboxes).
"""

from __future__ import annotations

import asyncio

import grpc

from shellgate.api import internal_pb2
from shellgate.reconcilers import policy as policy_rules
from shellgate.reconcilers.validation import MAX_POLICY_SIZE
from shellgate.store import decode
from shellgate.store.repositories import sandbox_settings_id
from tests.config.helpers import (
    P,
    S,
    add_rule_op,
    code_of,
    config,
    create_sandbox,
    current_state,
    failure,
    policy,
    rule,
)
from tests.support.gateway import Running
from tests.support.wait import eventually


def full_policy(sandbox: str, value: S.SandboxPolicy, expected: int = 0) -> P.UpdateConfigRequest:
    return P.UpdateConfigRequest(sandbox=sandbox, policy=value, expected_resource_version=expected)


def merge(sandbox: str, *ops: P.PolicyMergeOperation) -> P.UpdateConfigRequest:
    return P.UpdateConfigRequest(sandbox=sandbox, merge_operations=ops)


async def revisions(gw: Running, sandbox_id: str) -> list[internal_pb2.StoredPolicyRevision]:
    rows = await gw.gateway.store.list_versions("sandbox_policy", sandbox_id, limit=1000)
    return [decode(internal_pb2.StoredPolicyRevision, r) for r in rows]


async def sandbox_row(gw: Running, name: str) -> P.Sandbox:
    found = await gw.gateway.store.get_message_by_name(P.Sandbox, name)
    assert found is not None
    return found


# --- backfill (as the reference's tests do) -------------------------------------------------


async def test_backfill_with_the_correct_version(gw: Running) -> None:
    created = await create_sandbox(gw, "alpha")
    rv = (await sandbox_row(gw, "alpha")).metadata.resource_version
    response = await gw.stub.UpdateConfig(full_policy("alpha", policy(), rv))
    assert response.version == 1 and response.policy_hash
    stored = await sandbox_row(gw, "alpha")
    assert stored.spec.HasField("policy") and stored.metadata.resource_version == rv + 1
    [only] = await revisions(gw, created.metadata.id)
    assert only.revision.status == P.POLICY_STATUS_PENDING
    effective = await config(gw, "alpha")
    assert (effective.version, effective.policy_hash) == (1, response.policy_hash)
    assert effective.policy.process.run_as_user == "sandbox"  # defaulted identity


async def test_backfill_with_a_stale_version_is_aborted_and_writes_nothing(gw: Running) -> None:
    created = await create_sandbox(gw, "alpha")
    rv = (await sandbox_row(gw, "alpha")).metadata.resource_version
    error = await failure(gw.stub.UpdateConfig(full_policy("alpha", policy(), rv + 41)))
    assert error.code() == grpc.StatusCode.ABORTED
    stored = await sandbox_row(gw, "alpha")
    assert not stored.spec.HasField("policy") and stored.metadata.resource_version == rv
    assert await revisions(gw, created.metadata.id) == []


async def test_three_concurrent_backfills_with_one_version_one_wins(gw: Running) -> None:
    await create_sandbox(gw, "alpha")
    rv = (await sandbox_row(gw, "alpha")).metadata.resource_version
    variants = [policy(**{f"r{n}": rule(f"h{n}.example.com")}) for n in range(3)]
    results = await asyncio.gather(
        *(gw.stub.UpdateConfig(full_policy("alpha", v, rv)) for v in variants),
        return_exceptions=True,
    )
    codes = sorted(r.code().name for r in results if isinstance(r, grpc.aio.AioRpcError))
    assert codes == ["ABORTED", "ABORTED"]
    assert (await sandbox_row(gw, "alpha")).metadata.resource_version == rv + 1


async def test_static_fields_cannot_change_on_a_live_sandbox(gw: Running) -> None:
    created = await create_sandbox(gw, "alpha", policy())
    changed = policy()
    del changed.filesystem.read_only[:]
    error = await failure(gw.stub.UpdateConfig(full_policy("alpha", changed)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "/usr" in error.details()
    enriched = policy()
    enriched.filesystem.read_only.append("/lib")
    response = await gw.stub.UpdateConfig(full_policy("alpha", enriched))
    assert response.version == 1
    assert len(await revisions(gw, created.metadata.id)) == 1


async def test_unchanged_policy_returns_the_existing_version(gw: Running) -> None:
    await create_sandbox(gw, "alpha")
    first = await gw.stub.UpdateConfig(full_policy("alpha", policy()))
    again = await gw.stub.UpdateConfig(full_policy("alpha", policy()))
    assert (first.version, again.version) == (1, 1) and first.policy_hash == again.policy_hash


async def test_unsafe_or_oversized_policies_are_refused_before_any_write(gw: Running) -> None:
    created = await create_sandbox(gw, "alpha")
    root = policy()
    root.process.run_as_user = "root"
    traversal = policy()
    traversal.filesystem.read_only.append("/usr/../etc/shadow")
    broad = policy()
    broad.filesystem.read_write.append("/")
    wildcard = policy(bad=rule("*.com"))
    loopback = policy(bad=rule("127.0.0.1", 8080))
    huge = policy()
    huge.network_policies["x" * MAX_POLICY_SIZE].CopyFrom(rule("a.example.com"))
    for bad in (root, traversal, broad, wildcard, loopback, huge):
        code = await code_of(gw.stub.UpdateConfig(full_policy("alpha", bad)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert not (await sandbox_row(gw, "alpha")).spec.HasField("policy")
    assert await revisions(gw, created.metadata.id) == []


# --- merge operations and the revision insert loop --------------------------------------------


async def test_merge_operations_build_revisions(gw: Running) -> None:
    created = await create_sandbox(gw, "alpha", policy())
    first = await gw.stub.UpdateConfig(merge("alpha", add_rule_op("github", rule("github.com"))))
    assert first.version == 1
    second = await gw.stub.UpdateConfig(
        merge(
            "alpha",
            add_rule_op("pypi", rule("pypi.org")),
            add_rule_op("github", rule("github.com", binary="/usr/bin/git")),
        )
    )
    assert second.version == 2
    same = await gw.stub.UpdateConfig(merge("alpha", add_rule_op("pypi", rule("pypi.org"))))
    assert same.version == 2
    effective = await config(gw, "alpha")
    assert set(effective.policy.network_policies) == {"github", "pypi"}
    binaries = [b.path for b in effective.policy.network_policies["github"].binaries]
    assert binaries == ["/usr/bin/curl", "/usr/bin/git"]
    stored = await revisions(gw, created.metadata.id)
    assert [r.revision.version for r in stored] == [2, 1]
    assert [r.revision.status for r in stored] == [
        P.POLICY_STATUS_PENDING,
        P.POLICY_STATUS_SUPERSEDED,
    ]


async def test_l7_rules_target_an_endpoint_of_the_latest_revision(gw: Running) -> None:
    await create_sandbox(gw, "alpha", policy())
    await gw.stub.UpdateConfig(merge("alpha", add_rule_op("api", rule("api.example.com"))))
    allow = P.PolicyMergeOperation()
    allow.add_allow_rules.target.host = "api.example.com"
    allow.add_allow_rules.rules.add().allow.method = "GET"
    response = await gw.stub.UpdateConfig(merge("alpha", allow))
    assert response.version == 2
    endpoint = (await config(gw, "alpha")).policy.network_policies["api"].endpoints[0]
    assert [r.allow.method for r in endpoint.rules] == ["GET"]


async def test_invalid_merge_operations_write_nothing(gw: Running) -> None:
    created = await create_sandbox(gw, "alpha", policy())
    missing_endpoint = P.PolicyMergeOperation()
    missing_endpoint.add_allow_rules.target.host = "nowhere.example.com"
    missing_endpoint.add_allow_rules.rules.add().allow.method = "GET"
    cases = {
        grpc.StatusCode.INVALID_ARGUMENT: merge("alpha", add_rule_op("", rule("a.example.com"))),
        grpc.StatusCode.FAILED_PRECONDITION: merge("alpha", missing_endpoint),
    }
    for expected, request in cases.items():
        assert await code_of(gw.stub.UpdateConfig(request)) == expected
    blocked = merge("alpha", add_rule_op("meta", rule("169.254.169.254", 80)))
    assert await code_of(gw.stub.UpdateConfig(blocked)) == grpc.StatusCode.INVALID_ARGUMENT
    global_merge = P.UpdateConfigRequest(
        merge_operations=[add_rule_op("a", rule("a.example.com"))], **{"global": True}
    )
    assert await code_of(gw.stub.UpdateConfig(global_merge)) == grpc.StatusCode.INVALID_ARGUMENT
    assert await revisions(gw, created.metadata.id) == []


async def test_concurrent_merges_lose_no_rule(gw: Running, second_store: object) -> None:
    """Ten writers add distinct rules at once: each OK is in the final policy, the version
    numbers are dense, and the revision count is the number of OKs."""
    created = await create_sandbox(gw, "alpha", policy())
    names = [f"r{n}" for n in range(10)]
    results = await asyncio.gather(
        *(
            gw.stub.UpdateConfig(merge("alpha", add_rule_op(n, rule(f"{n}.example.com"))))
            for n in names
        ),
        return_exceptions=True,
    )
    ok = {name for name, r in zip(names, results, strict=True) if not isinstance(r, BaseException)}
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert all(e.code() == grpc.StatusCode.ABORTED for e in errors)
    assert len(ok) >= 5, results
    effective = await config(gw, "alpha")
    assert ok <= set(effective.policy.network_policies)
    stored = await revisions(gw, created.metadata.id)
    assert [r.revision.version for r in stored] == list(range(len(stored), 0, -1))
    assert len(stored) == len(ok)


async def test_a_lost_version_race_rebuilds_from_the_winner(gw: Running) -> None:
    """Another writer inserts n+1 between our read and our insert: we read again, re-apply
    our operation to its revision and insert n+2 containing both rules."""
    created = await create_sandbox(gw, "alpha", policy())
    await gw.stub.UpdateConfig(merge("alpha", add_rule_op("base", rule("base.example.com"))))
    store = gw.gateway.store
    original = store.list_versions
    raced = False

    async def list_then_race(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal raced
        rows = await original(*args, **kwargs)
        if not raced and kwargs.get("limit") == 1:
            raced = True
            winner = policy(base=rule("base.example.com"), other=rule("other.example.com"))
            stored = policy_rules.new_revision(
                revision_id="racer",
                sandbox_id=created.metadata.id,
                workspace="default",
                version=2,
                policy=winner,
                digest=policy_rules.policy_hash(winner),
                now_ms=1,
            )
            await gw.gateway.repos.revisions.insert_next_version(
                created.metadata.id, stored, "pending"
            )
        return rows

    store.list_versions = list_then_race  # type: ignore[method-assign]
    try:
        response = await gw.stub.UpdateConfig(
            merge("alpha", add_rule_op("mine", rule("mine.example.com")))
        )
    finally:
        store.list_versions = original  # type: ignore[method-assign]
    assert raced and response.version == 3
    effective = await config(gw, "alpha")
    assert set(effective.policy.network_policies) == {"base", "other", "mine"}


# --- status, supersede, list ------------------------------------------------------------------


def report(
    sandbox_id: str, version: int, status: int, error: str = ""
) -> P.ReportPolicyStatusRequest:
    return P.ReportPolicyStatusRequest(
        sandbox_id=sandbox_id, version=version, status=status, load_error=error
    )  # type: ignore[arg-type]


async def test_report_status_supersedes_and_moves_the_sandbox_forward(gw: Running) -> None:
    created = await create_sandbox(gw, "alpha", policy())
    sid = created.metadata.id
    for n in range(3):
        await gw.stub.UpdateConfig(merge("alpha", add_rule_op(f"r{n}", rule(f"r{n}.example.com"))))
    await gw.stub.ReportPolicyStatus(report(sid, 3, P.POLICY_STATUS_LOADED))
    await gw.stub.ReportPolicyStatus(report(sid, 3, P.POLICY_STATUS_LOADED))  # idempotent
    await gw.stub.ReportPolicyStatus(report(sid, 2, P.POLICY_STATUS_LOADED))  # late: no-op
    statuses = {r.revision.version: r.revision.status for r in await revisions(gw, sid)}
    assert statuses == {
        3: P.POLICY_STATUS_LOADED,
        2: P.POLICY_STATUS_SUPERSEDED,
        1: P.POLICY_STATUS_SUPERSEDED,
    }
    status = await gw.stub.GetSandboxPolicyStatus(P.GetSandboxPolicyStatusRequest(sandbox="alpha"))
    assert (status.revision.version, status.active_version) == (3, 3)
    assert status.revision.HasField("loaded_time") and status.revision.policy.network_policies
    error = await failure(gw.stub.ReportPolicyStatus(report(sid, 3, P.POLICY_STATUS_FAILED, "x")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert current_state(error) == "POLICY_STATUS_LOADED"


async def test_failed_report_records_the_error(gw: Running) -> None:
    created = await create_sandbox(gw, "alpha", policy())
    await gw.stub.UpdateConfig(merge("alpha", add_rule_op("r", rule("r.example.com"))))
    await gw.stub.ReportPolicyStatus(
        report(created.metadata.id, 1, P.POLICY_STATUS_FAILED, "bad rule")
    )
    status = await gw.stub.GetSandboxPolicyStatus(
        P.GetSandboxPolicyStatusRequest(sandbox="alpha", version=1)
    )
    assert (
        status.revision.status == P.POLICY_STATUS_FAILED
        and status.revision.load_error == "bad rule"
    )
    assert status.active_version == 0


async def test_report_validation_and_missing_revision(gw: Running) -> None:
    created = await create_sandbox(gw, "alpha")
    sid = created.metadata.id
    bad = [
        report("", 1, P.POLICY_STATUS_LOADED),
        report(sid, 0, P.POLICY_STATUS_LOADED),
        report(sid, 1, P.POLICY_STATUS_PENDING),
    ]
    for request in bad:
        assert (
            await code_of(gw.stub.ReportPolicyStatus(request)) == grpc.StatusCode.INVALID_ARGUMENT
        )
    assert (
        await code_of(gw.stub.ReportPolicyStatus(report(sid, 9, P.POLICY_STATUS_LOADED)))
        == grpc.StatusCode.NOT_FOUND
    )


async def test_concurrent_reports_of_one_revision_agree(gw: Running) -> None:
    created = await create_sandbox(gw, "alpha", policy())
    await gw.stub.UpdateConfig(merge("alpha", add_rule_op("r", rule("r.example.com"))))
    results = await asyncio.gather(
        gw.stub.ReportPolicyStatus(report(created.metadata.id, 1, P.POLICY_STATUS_LOADED)),
        gw.stub.ReportPolicyStatus(report(created.metadata.id, 1, P.POLICY_STATUS_FAILED, "x")),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(errors) == 1 and errors[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    [stored] = await revisions(gw, created.metadata.id)
    winner = (
        P.POLICY_STATUS_LOADED if isinstance(results[1], BaseException) else P.POLICY_STATUS_FAILED
    )
    assert stored.revision.status == winner


async def test_list_is_newest_first_paged_and_isolated(gw: Running) -> None:
    await create_sandbox(gw, "alpha", policy())
    await create_sandbox(gw, "beta", policy())
    for n in range(5):
        await gw.stub.UpdateConfig(merge("alpha", add_rule_op(f"r{n}", rule(f"r{n}.example.com"))))
    await gw.stub.UpdateConfig(merge("beta", add_rule_op("b", rule("b.example.com"))))
    seen, token = [], ""
    while True:
        page = await gw.stub.ListSandboxPolicies(
            P.ListSandboxPoliciesRequest(sandbox="alpha", page_size=2, page_token=token)
        )
        seen += [r.version for r in page.revisions]
        assert all(not r.HasField("policy") for r in page.revisions)
        token = page.next_page_token
        if not token:
            break
    assert seen == [5, 4, 3, 2, 1]
    beta = await gw.stub.ListSandboxPolicies(P.ListSandboxPoliciesRequest(sandbox="beta"))
    assert [r.version for r in beta.revisions] == [1]
    bad = P.ListSandboxPoliciesRequest(sandbox="alpha", page_token="zzz")
    assert await code_of(gw.stub.ListSandboxPolicies(bad)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_first_read_records_the_spec_policy_as_version_one(gw: Running) -> None:
    created = await create_sandbox(gw, "alpha", policy(gh=rule("github.com")))
    results = await asyncio.gather(*(config(gw, "alpha") for _ in range(4)))
    assert {r.version for r in results} == {1}
    [only] = await revisions(gw, created.metadata.id)
    assert only.revision.status == P.POLICY_STATUS_LOADED
    nothing = await create_sandbox(gw, "empty")
    empty = await config(gw, "empty")
    assert (empty.version, empty.policy_hash) == (0, "")
    assert await revisions(gw, nothing.metadata.id) == []


# --- global policy ----------------------------------------------------------------------------


def global_policy(value: S.SandboxPolicy) -> P.UpdateConfigRequest:
    return P.UpdateConfigRequest(policy=value, **{"global": True})


async def test_global_policy_overrides_and_blocks_sandbox_changes(gw: Running) -> None:
    await create_sandbox(gw, "alpha", policy(own=rule("own.example.com")))
    first = await gw.stub.UpdateConfig(global_policy(policy(g=rule("g.example.com"))))
    assert (first.version, first.settings_revision) == (1, 1)
    again = await gw.stub.UpdateConfig(global_policy(policy(g=rule("g.example.com"))))
    assert (again.version, again.settings_revision) == (1, 1)
    effective = await config(gw, "alpha")
    assert effective.policy_source == S.POLICY_SOURCE_GLOBAL
    assert set(effective.policy.network_policies) == {"g"} and effective.global_policy_version == 1
    for request in (
        full_policy("alpha", policy()),
        merge("alpha", add_rule_op("x", rule("x.example.com"))),
    ):
        error = await failure(gw.stub.UpdateConfig(request))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert current_state(error) == "POLICY_MANAGED_GLOBALLY"
    status = await gw.stub.GetSandboxPolicyStatus(
        P.GetSandboxPolicyStatusRequest(**{"global": True})
    )
    assert (status.revision.version, status.active_version) == (1, 1)
    deleted = await gw.stub.UpdateConfig(
        P.UpdateConfigRequest(setting_key="policy", delete_setting=True, **{"global": True})
    )
    assert deleted.deleted and deleted.settings_revision == 2
    restored = await config(gw, "alpha")
    assert restored.policy_source == S.POLICY_SOURCE_SANDBOX and set(
        restored.policy.network_policies
    ) == {"own"}
    listed = await gw.stub.ListSandboxPolicies(P.ListSandboxPoliciesRequest(**{"global": True}))
    assert [r.status for r in listed.revisions] == [P.POLICY_STATUS_SUPERSEDED]
    back = await gw.stub.UpdateConfig(global_policy(policy(g=rule("g.example.com"))))
    assert back.version == 2  # the superseded revision is not reused


async def test_concurrent_global_policies_end_on_the_highest_version(gw: Running) -> None:
    results = await asyncio.gather(
        *(
            gw.stub.UpdateConfig(global_policy(policy(**{f"g{n}": rule(f"g{n}.example.com")})))
            for n in range(4)
        ),
        return_exceptions=True,
    )
    ok = [r for r in results if not isinstance(r, BaseException)]
    assert ok
    stored = await gw.gateway.repos.settings.load_gateway()
    assert stored is not None
    assert stored.global_policy.version == max(r.version for r in ok)
    latest = await gw.gateway.repos.revisions.latest("__global__")
    assert latest is not None and latest.revision.policy_hash == stored.global_policy.policy_hash


# --- cleanup ----------------------------------------------------------------------------------


async def test_deleting_a_sandbox_removes_its_configuration(gw: Running) -> None:
    from tests.config.helpers import bool_value, proposal, setting

    created = await create_sandbox(gw, "alpha", policy())
    keep = await create_sandbox(gw, "beta", policy())
    for name in ("alpha", "beta"):
        await gw.stub.UpdateConfig(setting(name, "dummy_bool", bool_value(True)))
        await gw.stub.UpdateConfig(merge(name, add_rule_op("r", rule("r.example.com"))))
        await gw.stub.SubmitPolicyAnalysis(
            P.SubmitPolicyAnalysisRequest(name=name, proposed_chunks=[proposal("p.example.com")])
        )
    await gw.stub.DeleteSandbox(P.DeleteSandboxRequest(name="alpha"))
    store = gw.gateway.store
    # The owned rows go right after the sandbox row, once the driver confirms the deletion.
    settings_id = sandbox_settings_id(created.metadata.id)

    async def owned_rows() -> int:
        count = int(await store.get("sandbox_settings", settings_id) is not None)
        for object_type in ("sandbox_policy", "draft_policy_chunk"):
            page = await store.list(object_type, workspace=None, scope=created.metadata.id)
            count += len(page.records)
        return count

    await eventually(owned_rows, lambda count: count == 0)
    assert await store.get("sandbox", created.metadata.id) is None
    for object_type in ("sandbox_policy", "draft_policy_chunk"):
        assert (
            await store.list(object_type, workspace=None, scope=created.metadata.id)
        ).records == []
        assert (await store.list(object_type, workspace=None, scope=keep.metadata.id)).records
    assert await gw.gateway.repos.settings.remove_owned(created.metadata.id) == 0
    assert await gw.gateway.repos.revisions.remove_owned(created.metadata.id) == 0
    assert await gw.gateway.repos.chunks.remove_owned(created.metadata.id) == 0
