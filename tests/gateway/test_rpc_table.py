"""No RPC is served without a decision, and docs/security.md's RPC table is that decision.

The servicer's methods are walked: every method of the service that it overrides must carry
the rule the shell enforces, that rule must be the schema's, and the documented role and
scope must be what the rule says."""

from __future__ import annotations

import grpc
import pytest

from shellgate.api import openshell_pb2, openshell_pb2_grpc
from shellgate.controller.auth.authorize import enforceable_rule
from shellgate.controller.service.servicer import OpenShellService, rpc
from shellgate.reconcilers.access import SERVICE, MissingRule, Rule, rule_of
from tests.support.gateway import Running
from tests.support.rpc_table import Documented, documented_rpcs

P = openshell_pb2


def served_methods() -> dict[str, object]:
    base = openshell_pb2_grpc.OpenShellServicer.__dict__
    return {
        m.name: OpenShellService.__dict__[m.name]
        for m in SERVICE.methods
        if m.name in OpenShellService.__dict__
        and OpenShellService.__dict__[m.name] is not base.get(m.name)
    }


def documented_form(rule: Rule) -> Documented:
    if rule.auth_mode == "unauthenticated":
        role = "public"
    elif rule.auth_mode in ("sandbox", "operator", "peer"):
        role = "platform admin (supervisor)"
    elif rule.global_role == "platform_admin":
        role = "platform admin"
    elif rule.workspace_role:
        role = f"workspace {rule.workspace_role}"
    else:
        role = "authenticated"
    return Documented(role, rule.scope)


def test_every_served_method_carries_the_schema_rule() -> None:
    served = served_methods()
    assert {"Health", "WatchSandbox", "CreateSandbox", "ListWorkspaceMembers"} <= set(served)
    for name, method in served.items():
        carried = getattr(method, "authorization_rule", None)
        assert carried is not None, f"{name} is served outside the authorizing shell"
        assert carried == rule_of(name), name


def test_the_documented_table_is_the_served_one() -> None:
    documented = documented_rpcs()
    served = served_methods()
    missing = sorted(set(served) - set(documented))
    assert not missing, f"served but not in docs/security.md's RPC table: {missing}"
    extra = sorted(set(documented) - set(served))
    assert not extra, f"in the RPC table but not served: {extra}"
    for name in served:
        assert documented[name] == documented_form(rule_of(name)), name


def test_a_method_without_a_rule_cannot_be_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from shellgate.reconcilers import access

    with pytest.raises(MissingRule):
        rpc("NotInTheSchema", lambda gw, request: None)  # type: ignore[arg-type,return-value]
    monkeypatch.setattr(access, "rule_of", lambda method: Rule("bearer", "user"))
    import shellgate.controller.auth.authorize as authorize

    monkeypatch.setattr(authorize, "rule_of", lambda method: Rule("bearer", "user"))
    with pytest.raises(MissingRule, match="names no workspace"):
        enforceable_rule("GetCurrentUser")  # a workspace rule on a request without a workspace


async def test_without_authentication_the_caller_is_a_platform_admin(gw: Running) -> None:
    """No authenticators: the anonymous caller, who may do anything; ``default`` exists
    from the start and GetGatewayInfo says calls are not authenticated."""
    me = await gw.stub.GetCurrentUser(P.GetCurrentUserRequest())
    assert (me.subject, me.identity_provider) == ("anonymous", "none")
    info = await gw.stub.GetGatewayInfo(P.GetGatewayInfoRequest())
    assert list(info.extensions[0].supported_capabilities) == ["none"]
    listed = await gw.stub.ListWorkspaces(P.ListWorkspacesRequest())
    assert [w.metadata.name for w in listed.workspaces] == ["default"]
    refused = P.DeleteWorkspaceRequest(name="default")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await gw.stub.DeleteWorkspace(refused)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
