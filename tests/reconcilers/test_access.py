"""The authorization decision, table-tested: every role against every kind of rule."""

from __future__ import annotations

import pytest

from shellgate.reconcilers.access import (
    SERVICE,
    Caller,
    MemberRole,
    MissingRule,
    Rule,
    Target,
    Verdict,
    decide,
    may_change_membership,
    needs_membership,
    rule_of,
)

ADMIN = Caller("alice", platform_admin=True, user=True, scopes=None)
USER = Caller("bob", platform_admin=False, user=True, scopes=None)
NO_USER_ROLE = Caller("carol", platform_admin=False, user=False, scopes=None)

READ_SANDBOX = Rule("bearer", "user", "", "sandbox:read")
WRITE_PROVIDER = Rule("bearer", "admin", "", "provider:write")
CREATE_WORKSPACE = Rule("bearer", "", "platform_admin", "workspace:write")
WHO_AM_I = Rule("bearer")
SUPERVISOR = Rule("sandbox")
W = Target.WORKSPACE
OK, DENIED, UNAUTH = Verdict.ALLOW, Verdict.PERMISSION_DENIED, Verdict.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("rule", "caller", "target", "membership", "verdict"),
    [
        pytest.param(
            Rule("unauthenticated"), None, Target.NOTHING, MemberRole.NONE, OK, id="public"
        ),
        pytest.param(READ_SANDBOX, None, W, MemberRole.ADMIN, UNAUTH, id="nobody"),
        pytest.param(
            READ_SANDBOX, Caller("", True, True, None), W, MemberRole.NONE, UNAUTH, id="no-subject"
        ),
        pytest.param(READ_SANDBOX, ADMIN, W, MemberRole.NONE, OK, id="admin-any-workspace"),
        pytest.param(
            READ_SANDBOX, ADMIN, Target.ALL_WORKSPACES, MemberRole.NONE, OK, id="admin-all"
        ),
        pytest.param(
            CREATE_WORKSPACE, ADMIN, Target.NOTHING, MemberRole.NONE, OK, id="admin-global-role"
        ),
        pytest.param(SUPERVISOR, ADMIN, Target.NOTHING, MemberRole.NONE, OK, id="admin-supervisor"),
        pytest.param(READ_SANDBOX, USER, W, MemberRole.USER, OK, id="user-reads"),
        pytest.param(READ_SANDBOX, USER, W, MemberRole.ADMIN, OK, id="ws-admin-reads"),
        pytest.param(READ_SANDBOX, USER, W, MemberRole.NONE, DENIED, id="non-member"),
        pytest.param(WRITE_PROVIDER, USER, W, MemberRole.USER, DENIED, id="user-no-admin-write"),
        pytest.param(WRITE_PROVIDER, USER, W, MemberRole.ADMIN, OK, id="ws-admin-writes"),
        pytest.param(
            READ_SANDBOX, USER, Target.ALL_WORKSPACES, MemberRole.ADMIN, DENIED, id="user-all"
        ),
        pytest.param(READ_SANDBOX, USER, Target.GLOBAL, MemberRole.ADMIN, DENIED, id="user-global"),
        pytest.param(
            CREATE_WORKSPACE, USER, Target.NOTHING, MemberRole.ADMIN, DENIED, id="user-global-role"
        ),
        pytest.param(
            SUPERVISOR, USER, Target.NOTHING, MemberRole.ADMIN, DENIED, id="user-supervisor"
        ),
        pytest.param(
            READ_SANDBOX, NO_USER_ROLE, W, MemberRole.ADMIN, DENIED, id="member-without-user-role"
        ),
        pytest.param(WHO_AM_I, NO_USER_ROLE, Target.NOTHING, MemberRole.NONE, OK, id="whoami-any"),
        pytest.param(
            Rule("bearer", "user", "", "workspace:read"),
            USER,
            Target.MEMBERSHIPS,
            MemberRole.NONE,
            OK,
            id="own-workspaces",
        ),
        pytest.param(
            Rule("bearer", "user", "", "workspace:read"),
            NO_USER_ROLE,
            Target.MEMBERSHIPS,
            MemberRole.NONE,
            DENIED,
            id="own-workspaces-no-user-role",
        ),
        pytest.param(READ_SANDBOX, USER, Target.NOTHING, MemberRole.ADMIN, DENIED, id="no-target"),
        pytest.param(
            Rule("dual", "user", "", "config:read"),
            USER,
            W,
            MemberRole.USER,
            OK,
            id="dual-is-bearer",
        ),
        pytest.param(Rule("mystery", "user"), USER, W, MemberRole.ADMIN, DENIED, id="unknown-mode"),
    ],
)
def test_decision_table(
    rule: Rule, caller: Caller | None, target: Target, membership: MemberRole, verdict: Verdict
) -> None:
    assert decide(rule, caller, target, membership).verdict is verdict


@pytest.mark.parametrize(
    ("scopes", "verdict"),
    [
        (None, OK),
        (frozenset({"sandbox:read"}), OK),
        (frozenset({"openshell:all"}), OK),
        (frozenset({"sandbox:write"}), DENIED),
        (frozenset({"openid", "profile", "email", "offline_access"}), DENIED),
        (frozenset(), DENIED),
    ],
)
@pytest.mark.parametrize("admin", [True, False])
def test_scopes_restrict_every_role(
    scopes: frozenset[str] | None, verdict: Verdict, admin: bool
) -> None:
    caller = Caller("x", platform_admin=admin, user=True, scopes=scopes)
    assert decide(READ_SANDBOX, caller, W, MemberRole.USER).verdict is verdict


def test_a_refusal_says_why() -> None:
    assert "member" in decide(READ_SANDBOX, USER, W, MemberRole.NONE).reason
    assert "admin" in decide(WRITE_PROVIDER, USER, W, MemberRole.USER).reason
    assert "scope" in decide(READ_SANDBOX, Caller("x", True, True, frozenset()), W).reason


def test_membership_is_read_only_when_it_decides() -> None:
    assert needs_membership(READ_SANDBOX, USER, W)
    assert not needs_membership(READ_SANDBOX, ADMIN, W)
    assert not needs_membership(READ_SANDBOX, None, W)
    assert not needs_membership(READ_SANDBOX, USER, Target.ALL_WORKSPACES)
    assert not needs_membership(WHO_AM_I, USER, Target.NOTHING)


def test_only_a_platform_admin_touches_admin_memberships() -> None:
    assert may_change_membership(ADMIN, MemberRole.ADMIN).allowed
    assert may_change_membership(USER, MemberRole.USER).allowed
    assert may_change_membership(USER, MemberRole.ADMIN).verdict is DENIED


def test_every_schema_method_has_a_rule() -> None:
    for method in SERVICE.methods:
        assert rule_of(method.name).auth_mode


def test_rules_are_read_from_the_schema() -> None:
    assert rule_of("CreateProvider") == Rule("bearer", "admin", "", "provider:write")
    assert rule_of("Health") == Rule("unauthenticated")
    assert rule_of("CreateWorkspace").global_role == "platform_admin"


def test_an_unknown_method_has_no_rule() -> None:
    with pytest.raises(MissingRule):
        rule_of("NoSuchMethod")
