"""The ``openshell.v1.OpenShell`` servicer: one table from RPC name to handler.

``rpc`` gives every unary RPC the same shell: authorize the caller, time it, count it by
status code, and turn any error into a rich gRPC status through ``errors.status_for``.
``stream`` does the same for server-streaming RPCs. Each handler takes the gateway and the
request and returns the whole response. Methods not listed answer UNIMPLEMENTED (the
generated base class does that).

Authorization happens in the shell, before the handler: ``rpc`` and ``stream`` read the
method's rule from the schema when the class is built and refuse to build a method without
one, so no RPC can be served without a decision. Each served method carries its rule as
``authorization_rule`` (the RPC table test reads it).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from shellgate.api import openshell_pb2, openshell_pb2_grpc
from shellgate.controller.auth.authorize import authorize, enforceable_rule
from shellgate.controller.gateway import Gateway
from shellgate.controller.service import (
    config,
    credentials,
    drafts,
    exec,
    identity,
    policies,
    profiles,
    providers,
    sandboxes,
    services,
    templates,
    watch_sandbox,
    workspaces,
)
from shellgate.controller.service.errors import RequestError, status_for
from shellgate.controller.service.requests import find_live_sandbox, single_workspace
from shellgate.reconcilers.settings import UpdateKind, classify_update, is_global
from shellgate.store.deadline import deadline_in

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
GatewayHandler = Callable[[Gateway, Req], Awaitable[Resp]]
Method = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def rpc(method: str, handler: GatewayHandler[Req, Resp]) -> Method[Req, Resp]:
    """The servicer method for ``method``: the handler inside the shell every RPC shares."""
    rule = enforceable_rule(method)  # no rule, no method: raises when the class is built

    async def serve(
        self: OpenShellService, request: Req, context: grpc.aio.ServicerContext
    ) -> Resp:
        started = time.perf_counter()
        code = "OK"
        try:
            with deadline_in(context.time_remaining()):
                await authorize(self.gateway, method, rule, request)  # type: ignore[arg-type]
                return await handler(self.gateway, request)
        except Exception as exc:
            status = status_for(exc, method)
            code = status.code.name
            await context.abort_with_status(status)
            raise  # unreachable: abort_with_status raises
        finally:
            metrics = self.gateway.metrics
            metrics.grpc_requests.labels(method=method, code=code).inc()
            metrics.grpc_duration.labels(method=method).observe(time.perf_counter() - started)

    serve.__name__ = serve.__qualname__ = method
    serve.authorization_rule = rule  # type: ignore[attr-defined]
    serve.not_served = getattr(handler, "not_served", False)  # type: ignore[attr-defined]
    return serve


StreamHandler = Callable[[Gateway, Req, grpc.aio.ServicerContext], AsyncIterator[Resp]]


def stream(method: str, handler: StreamHandler[Req, Resp]) -> Callable[..., AsyncIterator[Resp]]:
    """The servicer method for a server-streaming ``method``: authorized like ``rpc`` before
    the first message; the handler maps its own errors once streaming."""
    rule = enforceable_rule(method)

    async def serve(
        self: OpenShellService, request: Req, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Resp]:
        try:
            await authorize(self.gateway, method, rule, request)  # type: ignore[arg-type]
        except Exception as exc:
            status = status_for(exc, method)
            self.gateway.metrics.grpc_requests.labels(method=method, code=status.code.name).inc()
            await context.abort_with_status(status)
            raise  # unreachable: abort_with_status raises
        async for response in handler(self.gateway, request, context):
            yield response

    serve.__name__ = serve.__qualname__ = method
    serve.authorization_rule = rule  # type: ignore[attr-defined]
    return serve


def not_served(reason: str) -> GatewayHandler[Any, Any]:
    """A handler for an RPC shellgate deliberately does not serve: UNIMPLEMENTED with the
    reason, after the same shell as every other RPC (the generated base class would answer
    UNIMPLEMENTED too, but without saying why)."""

    async def refuse(_gw: Gateway, _request: Any) -> Any:
        raise RequestError(grpc.StatusCode.UNIMPLEMENTED, reason)

    refuse.not_served = True  # type: ignore[attr-defined]
    return refuse


ROOTFS_STAGING_UNSERVED = (
    "BeginRootfsTarStaging is not served: shellgate has no image staging; "
    "name an image a registry serves in the template or the sandbox spec"
)


async def health(gw: Gateway, request: openshell_pb2.HealthRequest) -> openshell_pb2.HealthResponse:
    await gw.store.ping()
    return openshell_pb2.HealthResponse(
        status=openshell_pb2.SERVICE_STATUS_HEALTHY, version=_version()
    )


async def gateway_info(
    gw: Gateway, request: openshell_pb2.GetGatewayInfoRequest
) -> openshell_pb2.GetGatewayInfoResponse:
    return identity.gateway_info(gw, _version(), gw.auth_modes)


async def update_config(
    gw: Gateway, request: openshell_pb2.UpdateConfigRequest
) -> openshell_pb2.UpdateConfigResponse:
    """UpdateConfig carries exactly one change: a policy, one setting, or merge operations.
    Settings are ``config``'s, policies ``policies``'s; the routing lives here, the one module
    that may import both."""
    kind = classify_update(request)
    if is_global(request):
        if kind is UpdateKind.POLICY:
            return await policies.set_global_policy(gw, request.policy)
        if config.deletes_global_policy(request):
            return await policies.clear_global_policy(gw)
        return await config.update_global_setting(gw, request)
    workspace = single_workspace(request.workspace_scope)
    sandbox = await find_live_sandbox(gw, request.sandbox, workspace)
    if kind is UpdateKind.SETTING:
        return await config.update_sandbox_setting(gw, sandbox, request)
    if kind is UpdateKind.POLICY:
        return await policies.set_sandbox_policy(
            gw, sandbox, request.policy, request.expected_resource_version
        )
    return await policies.merge_sandbox_policy(gw, sandbox, request.merge_operations)


class OpenShellService(openshell_pb2_grpc.OpenShellServicer):
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    Health = rpc("Health", health)
    GetCurrentUser = rpc("GetCurrentUser", identity.get_current_user)
    GetGatewayInfo = rpc("GetGatewayInfo", gateway_info)

    # ----- sandboxes ----------------------------------------------------------------------

    CreateSandbox = rpc("CreateSandbox", sandboxes.create_sandbox)
    GetSandbox = rpc("GetSandbox", sandboxes.get_sandbox)
    ListSandboxes = rpc("ListSandboxes", sandboxes.list_sandboxes)
    DeleteSandbox = rpc("DeleteSandbox", sandboxes.delete_sandbox)
    StopSandbox = rpc("StopSandbox", sandboxes.stop_sandbox)
    StartSandbox = rpc("StartSandbox", sandboxes.start_sandbox)
    AttachSandboxProvider = rpc("AttachSandboxProvider", sandboxes.attach_sandbox_provider)
    DetachSandboxProvider = rpc("DetachSandboxProvider", sandboxes.detach_sandbox_provider)
    ListSandboxProviders = rpc("ListSandboxProviders", providers.list_sandbox_providers)

    WatchSandbox = stream("WatchSandbox", watch_sandbox.watch_sandbox)

    # ----- sandbox templates --------------------------------------------------------------

    CreateSandboxTemplate = rpc("CreateSandboxTemplate", templates.create_sandbox_template)
    GetSandboxTemplate = rpc("GetSandboxTemplate", templates.get_sandbox_template)
    ListSandboxTemplates = rpc("ListSandboxTemplates", templates.list_sandbox_templates)
    DeleteSandboxTemplate = rpc("DeleteSandboxTemplate", templates.delete_sandbox_template)
    BeginRootfsTarStaging = rpc("BeginRootfsTarStaging", not_served(ROOTFS_STAGING_UNSERVED))

    # ----- service endpoints --------------------------------------------------------------

    ExposeService = rpc("ExposeService", services.expose_service)
    GetService = rpc("GetService", services.get_service)
    ListServices = rpc("ListServices", services.list_services)
    DeleteService = rpc("DeleteService", services.delete_service)

    # ----- exec and logs (exec.py) ----------------------------------------------------------

    async def ExecSandbox(
        self, request: openshell_pb2.ExecSandboxRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async for event in exec.exec_sandbox(self.gateway, request, context):
            yield event

    async def ExecSandboxInteractive(self, requests: Any, context: grpc.aio.ServicerContext) -> Any:
        async for event in exec.exec_sandbox_interactive(self.gateway, requests, context):
            yield event

    async def GetSandboxLogs(
        self, request: openshell_pb2.GetSandboxLogsRequest, context: grpc.aio.ServicerContext
    ) -> openshell_pb2.GetSandboxLogsResponse:
        return await exec.get_sandbox_logs(self.gateway, request, context)

    # Authorized inside exec.py (the interactive call on its first message); the rule is
    # carried here like every other served method's.
    ExecSandbox.authorization_rule = exec.RULES["ExecSandbox"]  # type: ignore[attr-defined]
    ExecSandboxInteractive.authorization_rule = exec.RULES["ExecSandboxInteractive"]  # type: ignore[attr-defined]
    GetSandboxLogs.authorization_rule = exec.RULES["GetSandboxLogs"]  # type: ignore[attr-defined]

    # ----- providers ----------------------------------------------------------------------

    CreateProvider = rpc("CreateProvider", providers.create_provider)
    GetProvider = rpc("GetProvider", providers.get_provider)
    ListProviders = rpc("ListProviders", providers.list_providers)
    UpdateProvider = rpc("UpdateProvider", providers.update_provider)
    DeleteProvider = rpc("DeleteProvider", providers.delete_provider)

    # ----- provider credentials and refresh ------------------------------------------------

    GetProviderCredentials = rpc("GetProviderCredentials", credentials.get_provider_credentials)
    GetSandboxProviderStatus = rpc(
        "GetSandboxProviderStatus", credentials.get_sandbox_provider_status
    )
    ConfigureProviderRefresh = rpc(
        "ConfigureProviderRefresh", credentials.configure_provider_refresh
    )
    GetProviderRefreshStatus = rpc(
        "GetProviderRefreshStatus", credentials.get_provider_refresh_status
    )
    RotateProviderCredential = rpc(
        "RotateProviderCredential", credentials.rotate_provider_credential
    )
    DeleteProviderRefresh = rpc("DeleteProviderRefresh", credentials.delete_provider_refresh)

    # ----- provider profiles --------------------------------------------------------------

    ListProviderProfiles = rpc("ListProviderProfiles", profiles.list_provider_profiles)
    GetProviderProfile = rpc("GetProviderProfile", profiles.get_provider_profile)
    ImportProviderProfiles = rpc("ImportProviderProfiles", profiles.import_provider_profiles)
    UpdateProviderProfiles = rpc("UpdateProviderProfiles", profiles.update_provider_profiles)
    LintProviderProfiles = rpc("LintProviderProfiles", profiles.lint_provider_profiles)
    DeleteProviderProfile = rpc("DeleteProviderProfile", profiles.delete_provider_profile)

    # ----- config, policies and draft chunks ----------------------------------------------

    UpdateConfig = rpc("UpdateConfig", update_config)
    GetSandboxConfig = rpc("GetSandboxConfig", config.get_sandbox_config)
    GetGatewayConfig = rpc("GetGatewayConfig", config.get_gateway_config)
    ListSandboxPolicies = rpc("ListSandboxPolicies", policies.list_sandbox_policies)
    GetSandboxPolicyStatus = rpc("GetSandboxPolicyStatus", policies.get_sandbox_policy_status)
    ReportPolicyStatus = rpc("ReportPolicyStatus", policies.report_policy_status)
    SubmitPolicyAnalysis = rpc("SubmitPolicyAnalysis", drafts.submit_policy_analysis)
    GetDraftPolicy = rpc("GetDraftPolicy", drafts.get_draft_policy)
    ApproveDraftChunk = rpc("ApproveDraftChunk", drafts.approve_draft_chunk)
    RejectDraftChunk = rpc("RejectDraftChunk", drafts.reject_draft_chunk)
    ApproveAllDraftChunks = rpc("ApproveAllDraftChunks", drafts.approve_all_draft_chunks)
    EditDraftChunk = rpc("EditDraftChunk", drafts.edit_draft_chunk)
    UndoDraftChunk = rpc("UndoDraftChunk", drafts.undo_draft_chunk)
    ClearDraftChunks = rpc("ClearDraftChunks", drafts.clear_draft_chunks)
    GetDraftHistory = rpc("GetDraftHistory", drafts.get_draft_history)

    # ----- workspaces ---------------------------------------------------------------------

    CreateWorkspace = rpc("CreateWorkspace", workspaces.create_workspace)
    GetWorkspace = rpc("GetWorkspace", workspaces.get_workspace)
    ListWorkspaces = rpc("ListWorkspaces", workspaces.list_workspaces)
    DeleteWorkspace = rpc("DeleteWorkspace", workspaces.delete_workspace)
    AddWorkspaceMember = rpc("AddWorkspaceMember", workspaces.add_workspace_member)
    RemoveWorkspaceMember = rpc("RemoveWorkspaceMember", workspaces.remove_workspace_member)
    ListWorkspaceMembers = rpc("ListWorkspaceMembers", workspaces.list_workspace_members)


def _version() -> str:
    from shellgate import __version__

    return __version__
