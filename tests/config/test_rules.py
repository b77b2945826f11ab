"""Pure decisions of settings, policies, merge operations and chunks: no I/O, table-tested."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shellgate.api import internal_pb2
from shellgate.reconcilers import drafts as rules
from shellgate.reconcilers import settings as config_rules
from shellgate.reconcilers.errors import FailedPrecondition, InvalidArgument
from shellgate.reconcilers.policy import (
    FAILED,
    LOADED,
    PENDING,
    SUPERSEDED,
    is_always_blocked,
    is_tld_wildcard,
    new_revision,
    policy_hash,
    report_status,
    supersede,
    validate_policy,
    validate_static_fields,
    with_default_identity,
)
from shellgate.reconcilers.policy_merge import (
    Addition,
    add_rule_operation,
    apply_merge_operations,
    removal_operations,
    undo_operations,
)
from tests.config.helpers import P, S, add_rule_op, policy, proposal, rule

# --- settings ---------------------------------------------------------------------------------


def test_setting_change_bumps_only_on_a_change() -> None:
    stored = internal_pb2.SandboxSettings()
    change = config_rules.set_setting("dummy_int", S.SettingValue(int_value=1))
    change(stored)
    assert (stored.revision, change.changed) == (1, True)
    change(stored)
    assert (stored.revision, change.changed) == (1, False)
    delete = config_rules.delete_setting("dummy_int")
    delete(stored)
    delete(stored)
    assert (stored.revision, delete.changed, dict(stored.settings)) == (2, False, {})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("nope", S.SettingValue(bool_value=True)),
        ("policy", S.SettingValue(bytes_value=b"")),
        ("dummy_int", S.SettingValue(string_value="1")),
        ("dummy_bool", None),
    ],
)
def test_settings_are_registered_and_typed(key: str, value: S.SettingValue | None) -> None:
    def check() -> None:
        config_rules.require_registered(key, scope="sandbox")
        config_rules.checked_value(key, value)

    with pytest.raises(InvalidArgument):
        check()


def test_effective_settings_layer_global_over_sandbox() -> None:
    gateway = internal_pb2.GatewaySettings()
    gateway.settings["dummy_bool"].bool_value = True
    own = internal_pb2.SandboxSettings()
    own.settings["dummy_bool"].bool_value = False
    own.settings["dummy_int"].int_value = 5
    effective = config_rules.effective_settings(gateway, own)
    assert set(effective) == set(config_rules.REGISTERED_SETTINGS)
    assert effective["dummy_bool"].scope == S.SETTING_SCOPE_GLOBAL
    assert effective["dummy_bool"].value.bool_value is True
    assert effective["dummy_int"].scope == S.SETTING_SCOPE_SANDBOX
    assert not effective["ocsf_json_enabled"].HasField("value")
    with pytest.raises(FailedPrecondition):
        config_rules.require_not_global(gateway, "dummy_bool")


def test_global_policy_pointer_only_moves_forward() -> None:
    stored = internal_pb2.GatewaySettings()
    newer = config_rules.GlobalPolicyChange(policy(), 3, "h3")
    older = config_rules.GlobalPolicyChange(policy(), 2, "h2")
    newer(stored)
    older(stored)
    assert (stored.global_policy.version, stored.revision, older.changed) == (3, 1, False)
    clear = config_rules.GlobalPolicyChange(None)
    clear(stored)
    assert not stored.HasField("global_policy") and stored.revision == 2


@pytest.mark.parametrize(
    "request_",
    [
        P.UpdateConfigRequest(),
        P.UpdateConfigRequest(setting_key="a", merge_operations=[add_rule_op("r", rule("a.b"))]),
        P.UpdateConfigRequest(merge_operations=[add_rule_op("r", rule("a.b"))], **{"global": True}),
        P.UpdateConfigRequest(policy=policy(), delete_setting=True),
    ],
)
def test_one_change_per_request(request_: P.UpdateConfigRequest) -> None:
    with pytest.raises(InvalidArgument):
        config_rules.classify_update(request_)


# --- policy validation ------------------------------------------------------------------------


def _with(**changes: object) -> S.SandboxPolicy:
    made = policy()
    for path, value in changes.items():
        section, attr = path.split("__")
        target = getattr(made, section)
        if isinstance(value, list):
            getattr(target, attr).extend(value)
        else:
            setattr(target, attr, value)
    return made


@pytest.mark.parametrize(
    ("bad", "word"),
    [
        (_with(process__run_as_user="root"), "root"),
        (_with(process__run_as_group="0"), "root"),
        (_with(filesystem__read_only=["relative/path"]), "absolute"),
        (_with(filesystem__read_only=["/usr/../etc"]), "traversal"),
        (_with(filesystem__read_write=["/"]), "broad"),
        (_with(filesystem__read_only=[f"/p{n}" for n in range(300)]), "too many"),
        (_with(filesystem__read_only=["/" + "a" * 5000]), "maximum length"),
        (policy(x=rule("*.com")), "TLD wildcard"),
        (policy(x=rule("127.0.0.1")), "always blocked"),
        (policy(x=rule("a.example.com", port=70000)), "ports"),
        (policy(x=S.NetworkPolicyRule()), "endpoint"),
    ],
)
def test_unsafe_policies_are_named(bad: S.SandboxPolicy, word: str) -> None:
    violations = validate_policy(bad)
    assert violations and any(word in v.description for v in violations), violations


def test_safe_policy_and_helpers() -> None:
    assert validate_policy(with_default_identity(policy(gh=rule("*.github.com")))) == []
    assert is_tld_wildcard("*") and is_tld_wildcard("*.io") and not is_tld_wildcard("*.a.io")
    for blocked in ("localhost", "::1", "169.254.169.254", "0.0.0.0", "fe80::1", "224.0.0.1"):
        assert is_always_blocked(blocked), blocked
    assert not is_always_blocked("10.0.0.1") and not is_always_blocked("example.com")


def test_static_fields() -> None:
    base = policy()
    validate_static_fields(base, with_default_identity(base))  # unset identity == sandbox
    added = policy()
    added.filesystem.read_only.append("/lib")
    validate_static_fields(base, added)
    for changed in (_with(landlock__compatibility="hard"), _with(filesystem__include_workdir=True)):
        with pytest.raises(InvalidArgument):
            validate_static_fields(base, changed)


# --- merge operations -------------------------------------------------------------------------


def test_add_rule_lands_in_a_rule_sharing_an_endpoint() -> None:
    base = policy(existing=rule("github.com", binary="/usr/bin/git"))
    result = apply_merge_operations(base, [add_rule_op("new", rule("GitHub.com"))])
    assert result.landed == {0: "existing"} and set(result.policy.network_policies) == {"existing"}
    binaries = [b.path for b in result.policy.network_policies["existing"].binaries]
    assert binaries == ["/usr/bin/git", "/usr/bin/curl"]


def test_remove_operations() -> None:
    two_ports = rule("a.example.com")
    two_ports.endpoints[0].ports.extend([443, 8443])
    base = policy(a=two_ports, b=rule("b.example.com"))
    ops = [P.PolicyMergeOperation(), P.PolicyMergeOperation(), P.PolicyMergeOperation()]
    ops[0].remove_endpoint.host = "a.example.com"
    ops[0].remove_endpoint.port = 8443
    ops[1].remove_binary.rule_name = "b"
    ops[1].remove_binary.binary_path = "/usr/bin/curl"
    ops[2].remove_rule.rule_name = "missing"
    merged = apply_merge_operations(base, ops).policy
    assert set(merged.network_policies) == {"a"}
    assert list(merged.network_policies["a"].endpoints[0].ports) == [443]


def test_l7_rules_need_exactly_one_endpoint_and_a_base_for_deny() -> None:
    rest = rule("api.example.com")
    base = policy(api=rest)
    allow = P.PolicyMergeOperation()
    allow.add_allow_rules.target.host = "api.example.com"
    allow.add_allow_rules.rules.add().allow.method = "GET"
    deny = P.PolicyMergeOperation()
    deny.add_deny_rules.target.host = "api.example.com"
    deny.add_deny_rules.deny_rules.add(method="DELETE")
    with pytest.raises(FailedPrecondition):
        apply_merge_operations(base, [deny])
    merged = apply_merge_operations(base, [allow, deny, allow]).policy
    endpoint = merged.network_policies["api"].endpoints[0]
    assert (len(endpoint.rules), len(endpoint.deny_rules)) == (1, 1)
    elsewhere = P.PolicyMergeOperation()
    elsewhere.add_allow_rules.CopyFrom(allow.add_allow_rules)
    elsewhere.add_allow_rules.target.host = "nowhere.example.com"
    with pytest.raises(FailedPrecondition):
        apply_merge_operations(base, [elsewhere])


hosts = st.sampled_from(["a.example.com", "b.example.com", "c.example.com", "A.example.com"])
ports = st.lists(st.sampled_from([80, 443, 8443]), min_size=1, max_size=2)
binaries = st.sampled_from(["", "/usr/bin/curl", "/usr/bin/git"])
names = st.sampled_from(["r1", "r2", "r3"])
adds = st.lists(st.tuples(names, hosts, ports, binaries), min_size=1, max_size=6)


def _rule(host: str, port_list: list[int], binary: str) -> S.NetworkPolicyRule:
    made = rule(host, port_list[0], binary)
    if len(port_list) > 1:
        made.endpoints[0].ports.extend(port_list)
    return made


@settings(max_examples=300, deadline=None)
@given(existing=adds, incoming=adds)
def test_merging_is_idempotent(existing: list, incoming: list) -> None:  # type: ignore[type-arg]
    """merge(merge(p, ops), ops) == merge(p, ops) for any sequence of additions: the property
    approval recovery rests on (a half-done batch is finished by merging it again)."""
    base = apply_merge_operations(
        policy(), [add_rule_op(n, _rule(h, p, b)) for n, h, p, b in existing]
    ).policy
    ops = [add_rule_op(n, _rule(h, p, b)) for n, h, p, b in incoming]
    once = apply_merge_operations(base, ops).policy
    twice = apply_merge_operations(once, ops).policy
    assert policy_hash(once) == policy_hash(twice)


def test_undo_of_an_added_rule_restores_the_policy() -> None:
    base = policy(other=rule("o.example.com"))
    added = apply_merge_operations(base, [add_rule_operation("gh", rule("github.com"))])
    undone = apply_merge_operations(
        added.policy, removal_operations(added.landed[0], rule("github.com"))
    )
    assert undone.policy == base
    no_binary = rule("x.example.com", binary="")
    with_x = apply_merge_operations(base, [add_rule_operation("x", no_binary)])
    assert apply_merge_operations(with_x.policy, removal_operations("x", no_binary)).policy == base


def test_an_addition_records_only_what_the_merge_added() -> None:
    """Undo takes out what the approval added: nothing when the policy already granted it,
    only the new binaries and ports when it landed in an existing rule."""
    base = policy(mine=rule("github.com"))
    covered = apply_merge_operations(base, [add_rule_operation("gh", rule("github.com"))])
    assert covered.added == {0: Addition("mine")} and covered.added[0].adds_nothing
    assert undo_operations(covered.added[0]) == []
    wider = rule("GitHub.com", binary="/usr/bin/git")
    wider.endpoints[0].ports.extend([443, 8443])
    partial = apply_merge_operations(base, [add_rule_operation("gh", wider)])
    assert partial.added[0] == Addition("mine", False, ("/usr/bin/git",), (("github.com", 8443),))
    undone = apply_merge_operations(partial.policy, undo_operations(partial.added[0])).policy
    assert [b.path for b in undone.network_policies["mine"].binaries] == ["/usr/bin/curl"]
    assert list(undone.network_policies["mine"].endpoints[0].ports) == [443]
    created = apply_merge_operations(base, [add_rule_operation("o", rule("o.example.com"))])
    assert created.added[0].created_rule
    restored = apply_merge_operations(created.policy, undo_operations(created.added[0]))
    assert restored.policy == base


# --- revision states --------------------------------------------------------------------------


def _revision(status: int) -> internal_pb2.StoredPolicyRevision:
    return new_revision(
        revision_id="r",
        sandbox_id="s",
        workspace="default",
        version=4,
        policy=policy(),
        digest="h",
        now_ms=1000,
        status=status,
    )


@pytest.mark.parametrize(
    ("current", "reported", "result"),
    [
        (PENDING, LOADED, LOADED),
        (PENDING, FAILED, FAILED),
        (LOADED, LOADED, LOADED),
        (FAILED, FAILED, FAILED),
        (SUPERSEDED, LOADED, SUPERSEDED),
        (SUPERSEDED, FAILED, SUPERSEDED),
        (LOADED, FAILED, None),
        (FAILED, LOADED, None),
    ],
)
def test_report_transitions(current: int, reported: int, result: int | None) -> None:
    mutation = report_status(reported, "boom", 2000)
    if result is None:
        with pytest.raises(FailedPrecondition):
            mutation(_revision(current))
        return
    assert mutation(_revision(current)).revision.status == result


def test_supersede_only_retires_active_revisions() -> None:
    for status, after in ((PENDING, SUPERSEDED), (LOADED, SUPERSEDED), (FAILED, FAILED)):
        assert supersede(_revision(status)).revision.status == after
    with pytest.raises(InvalidArgument):
        report_status(PENDING, "", 1)


# --- chunk states -----------------------------------------------------------------------------


def _chunk(status: str = "pending") -> internal_pb2.StoredDraftChunk:
    stored = rules.new_chunk(
        chunk_id="c",
        sandbox_id="s",
        workspace="default",
        proposed=proposal("a.example.com"),
        draft_version=1,
        now_ms=1000,
    )
    stored.chunk.status = status
    return stored


@pytest.mark.parametrize(
    ("status", "action", "allowed"),
    [
        ("pending", "approve", True),
        ("rejected", "approve", False),
        ("approved", "approve", False),
        ("pending", "reject", True),
        ("approved", "reject", False),
        ("rejected", "reject", False),
        ("approved", "undo", True),
        ("pending", "undo", False),
        ("pending", "edit", True),
        ("approved", "edit", False),
    ],
)
def test_chunk_transitions(status: str, action: str, allowed: bool) -> None:
    mutations = {
        "approve": rules.approve("", 5),
        "reject": rules.reject("why", 5),
        "undo": rules.undo(5),
        "edit": rules.edit(rule("b.example.com"), 5),
    }
    stored = _chunk(status)
    token = rules.review_token(stored)
    if not allowed:
        with pytest.raises(FailedPrecondition) as caught:
            mutations[action](stored)
        assert caught.value.current_state == status
        return
    after = mutations[action](stored)
    assert rules.review_token(after) != token and after.history[-1].event_time.ToMilliseconds() == 5


def test_approve_from_rejected_with_the_current_token_only() -> None:
    stored = _chunk("rejected")
    token = rules.review_token(stored)
    with pytest.raises(FailedPrecondition):
        rules.approve("stale", 5)(_chunk("rejected"))
    approved = rules.approve(token, 5)(stored)
    assert (approved.chunk.status, approved.effect) == ("approved", rules.EFFECT_ADDING)


def test_a_chunk_with_an_effect_takes_no_new_decision_and_settles_once() -> None:
    approved = rules.approve("", 5)(_chunk())
    with pytest.raises(FailedPrecondition):
        rules.undo(6)(approved)
    settled = rules.settle(rules.EFFECT_ADDING, 3, "landed")(approved)
    assert (settled.effect, settled.applied_version, settled.applied_rule_name) == (
        rules.EFFECT_NONE,
        3,
        "landed",
    )
    again = rules.settle(rules.EFFECT_ADDING, 9, "other")(settled)
    assert again.applied_version == 3
    undone = rules.undo(7)(settled)
    assert [op.WhichOneof("operation") for op in rules.effect_operations(undone)] == [
        "remove_binary"
    ]


def test_settle_and_withdrawal_apply_to_the_decision_they_were_read_with() -> None:
    """A stale copy (older review_seq) settles or withdraws nothing, and is not owed."""
    first = rules.approve("", 5)(_chunk())
    stale = internal_pb2.StoredDraftChunk()
    stale.CopyFrom(first)
    undone = rules.undo(7)(rules.settle(rules.EFFECT_ADDING, 1, "r")(first))
    again = rules.approve("", 8)(rules.settle(rules.EFFECT_REMOVING, 2, "")(undone))
    assert not rules.same_decision(stale, undone) and not rules.same_decision(stale, again)
    seq = stale.review_seq
    assert rules.settle(rules.EFFECT_ADDING, 3, "r", review_seq=seq)(again).effect == (
        rules.EFFECT_ADDING
    )
    assert rules.abandon_approval("x", 9, seq)(again).chunk.status == "approved"
    assert rules.same_decision(again, again)
    addition = rules.AppliedAddition(rule_name="mine")
    settled = rules.settle(
        rules.EFFECT_ADDING, 3, "mine", review_seq=again.review_seq, addition=addition
    )(again)
    assert settled.effect == rules.EFFECT_NONE and settled.applied_addition == addition
    assert rules.effect_operations(rules.undo(10)(settled)) == []


def test_a_recovery_finds_the_addition_noted_on_the_revision_it_came_from() -> None:
    chunk = rules.approve("", 5, base_version=1)(_chunk())
    chunk.chunk.proposed_rule.CopyFrom(rule("github.com"))
    added = apply_merge_operations(policy(), [add_rule_operation("gh", rule("github.com"))])
    note = rules.chunk_addition(chunk, added.added[0])

    def revision(version: int, grants: bool, *notes: internal_pb2.ChunkAddition) -> Any:
        made = _revision(PENDING)
        made.revision.version = version
        made.revision.policy.CopyFrom(added.policy if grants else policy())
        made.chunk_additions.extend(notes)
        return made

    assert rules.recorded_addition(chunk, [revision(3, True), revision(2, True, note)]) == (
        note.addition,
        True,
    )
    assert rules.recorded_addition(chunk, [revision(3, True), revision(2, False)]) == (None, True)
    assert rules.recorded_addition(chunk, [revision(1, True, note)]) == (None, True)
    assert rules.recorded_addition(chunk, [revision(3, True)]) == (None, False)


def test_submission_checks_and_notes() -> None:
    assert rules.proposal_problem(P.PolicyChunk(rule_name="")) is not None
    assert rules.proposal_problem(proposal("a.example.com")) is None
    assert rules.dedup_key(proposal("A.example.com", 80)) == "a.example.com|80|/usr/bin/curl"
    assert "database" in rules.security_notes("db.example.com", 5432)
    assert "private" in rules.security_notes("10.1.2.3", 443)
    assert rules.security_notes("example.com", 443) == ""
    folded = rules.fold_observation(3, 5000)(_chunk())
    assert folded.chunk.hit_count == 4 and folded.chunk.last_seen_time.ToMilliseconds() == 5000
