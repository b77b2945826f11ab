"""Builders and assertions shared by the config, policy and draft tests."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from shellgate.api import openshell_pb2, sandbox_pb2
from tests.support.gateway import Running
from tests.support.wait import eventually

P = openshell_pb2
S = sandbox_pb2


def rule(
    host: str, port: int = 443, binary: str = "/usr/bin/curl", name: str = ""
) -> S.NetworkPolicyRule:
    made = S.NetworkPolicyRule(name=name, endpoints=[S.NetworkEndpoint(host=host, port=port)])
    if binary:
        made.binaries.add(path=binary)
    return made


def policy(**rules: S.NetworkPolicyRule) -> S.SandboxPolicy:
    made = S.SandboxPolicy(version=1)
    made.filesystem.read_only.append("/usr")
    made.filesystem.read_write.append("/tmp")
    for name, value in rules.items():
        made.network_policies[name].CopyFrom(value)
    return made


def add_rule_op(name: str, value: S.NetworkPolicyRule) -> P.PolicyMergeOperation:
    op = P.PolicyMergeOperation()
    op.add_rule.rule_name = name
    op.add_rule.rule.CopyFrom(value)
    return op


def proposal(host: str, port: int = 443, binary: str = "/usr/bin/curl") -> P.PolicyChunk:
    name = f"allow_{host.replace('.', '_').replace('-', '_')}_{port}"
    return P.PolicyChunk(rule_name=name, proposed_rule=rule(host, port, binary), confidence=0.9)


def bool_value(value: bool) -> S.SettingValue:
    return S.SettingValue(bool_value=value)


def setting(
    sandbox: str, key: str, value: S.SettingValue | None = None, **kw: Any
) -> P.UpdateConfigRequest:
    request = P.UpdateConfigRequest(sandbox=sandbox, setting_key=key, **kw)
    if value is not None:
        request.setting_value.CopyFrom(value)
    return request


def global_setting(
    key: str, value: S.SettingValue | None = None, **kw: Any
) -> P.UpdateConfigRequest:
    request = P.UpdateConfigRequest(setting_key=key, **{"global": True}, **kw)
    if value is not None:
        request.setting_value.CopyFrom(value)
    return request


async def create_sandbox(
    gw: Running, name: str, spec_policy: S.SandboxPolicy | None = None
) -> P.Sandbox:
    """Create a sandbox and wait until the fake driver made it READY, so that its
    resource_version stays still for tests that send it back."""
    spec = P.SandboxSpec()
    if spec_policy is not None:
        spec.policy.CopyFrom(spec_policy)
    created = (await gw.stub.CreateSandbox(P.CreateSandboxRequest(name=name, spec=spec))).sandbox

    async def phase() -> int:
        found = await gw.gateway.store.get_message(P.Sandbox, created.metadata.id)
        return found.status.phase if found is not None else 0

    await eventually(phase, lambda p: p == P.SANDBOX_PHASE_READY)
    return created


async def config(gw: Running, name: str) -> S.GetSandboxConfigResponse:
    return await gw.stub.GetSandboxConfig(S.GetSandboxConfigRequest(name=name))


async def failure(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def code_of(call: Awaitable[Any]) -> grpc.StatusCode:
    return (await failure(call)).code()


def current_state(error: grpc.aio.AioRpcError) -> str:
    """The ``current_state`` a FAILED_PRECONDITION carries in its ErrorInfo detail."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)  # type: ignore[arg-type]
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return info.metadata.get("current_state", "")
    return ""
