"""Config RPCs: UpdateConfig (settings here, policies in ``policies``) and GetSandboxConfig.

Settings are stored as protobuf messages (``GatewaySettings`` with id ``gateway-settings``,
``SandboxSettings`` with id ``sandbox-settings-<sandbox id>``), each with a ``revision``
counter, and changed only by ``config_store.update_settings``: read, apply one set or
delete, CAS, re-read and re-apply on a conflict. No mutex (openshell-cas.md §9 item 3).
"""

from __future__ import annotations

from shellgate.api import openshell_pb2, sandbox_pb2
from shellgate.controller.config_store import (
    GatewaySettings,
    SandboxSettings,
    blank_gateway_settings,
    blank_sandbox_settings,
    load_gateway_settings,
    load_sandbox_settings,
    update_settings,
)
from shellgate.controller.gateway import Gateway
from shellgate.controller.service import policies
from shellgate.controller.service.requests import single_workspace
from shellgate.controller.service.sandboxes import find_sandbox
from shellgate.reconcilers.settings import (
    POLICY_KEY,
    SettingChange,
    UpdateKind,
    checked_value,
    classify_update,
    config_revision,
    delete_setting,
    effective_settings,
    is_global,
    require_not_global,
    require_registered,
    set_setting,
)

UpdateConfigRequest = openshell_pb2.UpdateConfigRequest
UpdateConfigResponse = openshell_pb2.UpdateConfigResponse
POLICY_SOURCE_SANDBOX = sandbox_pb2.POLICY_SOURCE_SANDBOX
POLICY_SOURCE_GLOBAL = sandbox_pb2.POLICY_SOURCE_GLOBAL


async def update_config(gw: Gateway, request: UpdateConfigRequest) -> UpdateConfigResponse:
    """Exactly one change per request: a policy, one setting, or merge operations."""
    kind = classify_update(request)
    if is_global(request):
        if kind is UpdateKind.POLICY:
            return await policies.set_global_policy(gw, request.policy)
        return await _update_global_setting(gw, request)
    workspace = single_workspace(request.workspace_scope)
    sandbox = await policies.find_live_sandbox(gw, request.sandbox, workspace)
    if kind is UpdateKind.SETTING:
        return await _update_sandbox_setting(gw, sandbox, request)
    if kind is UpdateKind.POLICY:
        return await policies.set_sandbox_policy(
            gw, sandbox, request.policy, request.expected_resource_version
        )
    return await policies.merge_sandbox_policy(gw, sandbox, request.merge_operations)


def _change(key: str, request: UpdateConfigRequest) -> SettingChange:
    if request.delete_setting:
        return delete_setting(key)
    value = request.setting_value if request.HasField("setting_value") else None
    return set_setting(key, checked_value(key, value))


def _settings_response(
    settings: GatewaySettings | SandboxSettings, change: SettingChange
) -> UpdateConfigResponse:
    return UpdateConfigResponse(
        settings_revision=settings.revision, deleted=change.value is None and change.changed
    )


async def _update_global_setting(gw: Gateway, request: UpdateConfigRequest) -> UpdateConfigResponse:
    key = request.setting_key.strip()
    if key == POLICY_KEY and request.delete_setting:
        return await policies.clear_global_policy(gw)
    require_registered(key, scope="global")
    change = _change(key, request)
    written = await update_settings(gw, GatewaySettings, blank_gateway_settings(), change)
    return _settings_response(written, change)


async def _update_sandbox_setting(
    gw: Gateway, sandbox: openshell_pb2.Sandbox, request: UpdateConfigRequest
) -> UpdateConfigResponse:
    """A key managed globally is refused (checked on a fresh read of the global settings; a
    global set racing with this write is resolved at read time: global wins)."""
    key = request.setting_key.strip()
    require_registered(key, scope="sandbox")
    change = _change(key, request)
    require_not_global(await load_gateway_settings(gw), key)
    blank = blank_sandbox_settings(sandbox.metadata.id, sandbox.metadata.workspace)
    written = await update_settings(gw, SandboxSettings, blank, change)
    return _settings_response(written, change)


async def get_sandbox_config(
    gw: Gateway, request: sandbox_pb2.GetSandboxConfigRequest
) -> sandbox_pb2.GetSandboxConfigResponse:
    """The effective policy (global over sandbox) and every registered setting with the
    scope its value comes from."""
    sandbox = await find_sandbox(gw, request.name, single_workspace(request.workspace_scope))
    revision = await policies.effective_revision(gw, sandbox)
    gateway = await load_gateway_settings(gw)
    own = await load_sandbox_settings(gw, sandbox.metadata.id)
    response = sandbox_pb2.GetSandboxConfigResponse(
        workspace=sandbox.metadata.workspace,
        policy_source=POLICY_SOURCE_SANDBOX,
        settings_revision=own.revision if own is not None else 0,
    )
    if revision is not None:
        response.policy.CopyFrom(revision.revision.policy)
        response.version = revision.revision.version
        response.policy_hash = revision.revision.policy_hash
    if gateway is not None and gateway.HasField("global_policy"):
        response.policy.CopyFrom(gateway.global_policy.policy)
        response.policy_hash = gateway.global_policy.policy_hash
        response.policy_source = POLICY_SOURCE_GLOBAL
        response.global_policy_version = gateway.global_policy.version
        response.version = response.version or 1
    for key, setting in effective_settings(gateway, own).items():
        response.settings[key].CopyFrom(setting)
    response.config_revision = config_revision(
        response.policy_hash, response.policy_source, response.settings
    )
    return response
