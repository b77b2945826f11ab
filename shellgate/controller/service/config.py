"""Config RPCs: UpdateConfig's settings paths (the servicer routes policy changes to
``policies``) and GetSandboxConfig.

Settings are stored as protobuf messages (``GatewaySettings`` with id ``gateway-settings``,
``SandboxSettings`` with id ``sandbox-settings-<sandbox id>``), each with a ``revision``
counter, and changed only by the settings repository's ``update``: read, apply one set or
delete, CAS, re-read and re-apply on a conflict. No mutex: every replica writes settings,
and the CAS keeps them apart.
"""

from __future__ import annotations

from shellgate.api import openshell_pb2, sandbox_pb2
from shellgate.controller.gateway import Gateway
from shellgate.controller.service.requests import (
    effective_revision,
    find_sandbox,
    single_workspace,
)
from shellgate.reconcilers.settings import (
    POLICY_KEY,
    SettingChange,
    checked_value,
    config_revision,
    delete_setting,
    effective_settings,
    global_settings_view,
    require_not_global,
    require_registered,
    set_setting,
)
from shellgate.store.repositories import GatewaySettings, SandboxSettings

UpdateConfigRequest = openshell_pb2.UpdateConfigRequest
UpdateConfigResponse = openshell_pb2.UpdateConfigResponse
POLICY_SOURCE_SANDBOX = sandbox_pb2.POLICY_SOURCE_SANDBOX
POLICY_SOURCE_GLOBAL = sandbox_pb2.POLICY_SOURCE_GLOBAL


def deletes_global_policy(request: UpdateConfigRequest) -> bool:
    """``setting_key=policy`` with ``delete_setting`` on the global scope: the global policy
    is cleared (a policy path, though it arrives as a setting)."""
    return request.setting_key.strip() == POLICY_KEY and request.delete_setting


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


async def update_global_setting(gw: Gateway, request: UpdateConfigRequest) -> UpdateConfigResponse:
    key = request.setting_key.strip()
    require_registered(key, scope="global")
    change = _change(key, request)
    written = await gw.repos.settings.update(gw.repos.settings.blank_gateway(), change)
    return _settings_response(written, change)


async def update_sandbox_setting(
    gw: Gateway, sandbox: openshell_pb2.Sandbox, request: UpdateConfigRequest
) -> UpdateConfigResponse:
    """A key managed globally is refused (checked on a fresh read of the global settings; a
    global set racing with this write is resolved at read time: global wins)."""
    key = request.setting_key.strip()
    require_registered(key, scope="sandbox")
    change = _change(key, request)
    require_not_global(await gw.repos.settings.load_gateway(), key)
    blank = gw.repos.settings.blank_sandbox(sandbox.metadata.id, sandbox.metadata.workspace)
    written = await gw.repos.settings.update(blank, change)
    return _settings_response(written, change)


async def get_sandbox_config(
    gw: Gateway, request: sandbox_pb2.GetSandboxConfigRequest
) -> sandbox_pb2.GetSandboxConfigResponse:
    """The effective policy (global over sandbox) and every registered setting with the
    scope its value comes from."""
    sandbox = await find_sandbox(gw, request.name, single_workspace(request.workspace_scope))
    revision = await effective_revision(gw, sandbox)
    gateway = await gw.repos.settings.load_gateway()
    own = await gw.repos.settings.load_sandbox(sandbox.metadata.id)
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


async def get_gateway_config(
    gw: Gateway, request: sandbox_pb2.GetGatewayConfigRequest
) -> sandbox_pb2.GetGatewayConfigResponse:
    """The global settings UpdateConfig stores, with the revision a client sends back to see
    whether anything changed (0 before the first global write)."""
    gateway = await gw.repos.settings.load_gateway()
    response = sandbox_pb2.GetGatewayConfigResponse(
        settings_revision=gateway.revision if gateway is not None else 0
    )
    for key, value in global_settings_view(gateway).items():
        response.settings[key].CopyFrom(value)
    return response
