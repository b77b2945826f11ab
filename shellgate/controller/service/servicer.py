"""The ``openshell.v1.OpenShell`` servicer: thin wrappers around the handler modules.

``unary`` gives every RPC the same shell: time it, count it by status code, and turn any
error into a rich gRPC status through ``errors.status_for``. Methods not defined here answer
UNIMPLEMENTED (the generated base class does that).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from shellgate.api import openshell_pb2, openshell_pb2_grpc, sandbox_pb2
from shellgate.controller.gateway import Gateway
from shellgate.controller.service import config, drafts, policies, providers, sandboxes, watch
from shellgate.controller.service.errors import status_for
from shellgate.controller.service.requests import (
    find_live_sandbox,
    find_sandbox,
    single_workspace,
)
from shellgate.reconcilers.settings import UpdateKind, classify_update, is_global

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext], Awaitable[Resp]]


def unary(method: str) -> Callable[[Handler[Req, Resp]], Handler[Req, Resp]]:
    def decorate(function: Handler[Req, Resp]) -> Handler[Req, Resp]:
        @functools.wraps(function)
        async def wrapper(
            self: OpenShellService, request: Req, context: grpc.aio.ServicerContext
        ) -> Resp:
            started = time.perf_counter()
            code = "OK"
            try:
                return await function(self, request, context)
            except Exception as exc:
                status = status_for(exc, method)
                code = status.code.name
                await context.abort_with_status(status)
                raise  # unreachable: abort_with_status raises
            finally:
                metrics = self.gateway.metrics
                metrics.grpc_requests.labels(method=method, code=code).inc()
                metrics.grpc_duration.labels(method=method).observe(time.perf_counter() - started)

        return wrapper

    return decorate


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

    @unary("Health")
    async def Health(
        self, request: openshell_pb2.HealthRequest, context: Any
    ) -> openshell_pb2.HealthResponse:
        await self.gateway.store.ping()
        return openshell_pb2.HealthResponse(
            status=openshell_pb2.SERVICE_STATUS_HEALTHY, version=_version()
        )

    # ----- sandboxes ----------------------------------------------------------------------

    @unary("CreateSandbox")
    async def CreateSandbox(
        self, request: openshell_pb2.CreateSandboxRequest, context: Any
    ) -> openshell_pb2.SandboxResponse:
        return openshell_pb2.SandboxResponse(
            sandbox=await sandboxes.create_sandbox(self.gateway, request)
        )

    @unary("GetSandbox")
    async def GetSandbox(
        self, request: openshell_pb2.GetSandboxRequest, context: Any
    ) -> openshell_pb2.SandboxResponse:
        found = await find_sandbox(
            self.gateway, request.name, single_workspace(request.workspace_scope)
        )
        return openshell_pb2.SandboxResponse(sandbox=found)

    @unary("ListSandboxes")
    async def ListSandboxes(
        self, request: openshell_pb2.ListSandboxesRequest, context: Any
    ) -> openshell_pb2.ListSandboxesResponse:
        return await sandboxes.list_sandboxes(self.gateway, request)

    @unary("DeleteSandbox")
    async def DeleteSandbox(
        self, request: openshell_pb2.DeleteSandboxRequest, context: Any
    ) -> openshell_pb2.DeleteSandboxResponse:
        return await sandboxes.delete_sandbox(self.gateway, request)

    @unary("StopSandbox")
    async def StopSandbox(
        self, request: openshell_pb2.StopSandboxRequest, context: Any
    ) -> openshell_pb2.SandboxResponse:
        return openshell_pb2.SandboxResponse(
            sandbox=await sandboxes.stop_sandbox(self.gateway, request)
        )

    @unary("StartSandbox")
    async def StartSandbox(
        self, request: openshell_pb2.StartSandboxRequest, context: Any
    ) -> openshell_pb2.SandboxResponse:
        return openshell_pb2.SandboxResponse(
            sandbox=await sandboxes.start_sandbox(self.gateway, request)
        )

    async def WatchSandbox(
        self, request: openshell_pb2.WatchSandboxRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async for event in watch.watch_sandbox(self.gateway, request, context):
            yield event

    @unary("AttachSandboxProvider")
    async def AttachSandboxProvider(
        self, request: openshell_pb2.AttachSandboxProviderRequest, context: Any
    ) -> openshell_pb2.AttachSandboxProviderResponse:
        return await sandboxes.attach_sandbox_provider(self.gateway, request)

    @unary("DetachSandboxProvider")
    async def DetachSandboxProvider(
        self, request: openshell_pb2.DetachSandboxProviderRequest, context: Any
    ) -> openshell_pb2.DetachSandboxProviderResponse:
        return await sandboxes.detach_sandbox_provider(self.gateway, request)

    @unary("ListSandboxProviders")
    async def ListSandboxProviders(
        self, request: openshell_pb2.ListSandboxProvidersRequest, context: Any
    ) -> openshell_pb2.ListSandboxProvidersResponse:
        return await providers.list_sandbox_providers(self.gateway, request)

    # ----- providers ----------------------------------------------------------------------

    @unary("CreateProvider")
    async def CreateProvider(
        self, request: openshell_pb2.CreateProviderRequest, context: Any
    ) -> openshell_pb2.ProviderResponse:
        return providers.response(await providers.create_provider(self.gateway, request))

    @unary("GetProvider")
    async def GetProvider(
        self, request: openshell_pb2.GetProviderRequest, context: Any
    ) -> openshell_pb2.ProviderResponse:
        found = await providers.find_provider(
            self.gateway, request.name, single_workspace(request.workspace_scope)
        )
        return providers.response(found)

    @unary("ListProviders")
    async def ListProviders(
        self, request: openshell_pb2.ListProvidersRequest, context: Any
    ) -> openshell_pb2.ListProvidersResponse:
        return await providers.list_providers(self.gateway, request)

    @unary("UpdateProvider")
    async def UpdateProvider(
        self, request: openshell_pb2.UpdateProviderRequest, context: Any
    ) -> openshell_pb2.ProviderResponse:
        return providers.response(await providers.update_provider(self.gateway, request))

    @unary("DeleteProvider")
    async def DeleteProvider(
        self, request: openshell_pb2.DeleteProviderRequest, context: Any
    ) -> openshell_pb2.DeleteProviderResponse:
        return await providers.delete_provider(self.gateway, request)

    # ----- config, policies and draft chunks ----------------------------------------------

    @unary("UpdateConfig")
    async def UpdateConfig(
        self, request: openshell_pb2.UpdateConfigRequest, context: Any
    ) -> openshell_pb2.UpdateConfigResponse:
        return await update_config(self.gateway, request)

    @unary("GetSandboxConfig")
    async def GetSandboxConfig(
        self, request: sandbox_pb2.GetSandboxConfigRequest, context: Any
    ) -> sandbox_pb2.GetSandboxConfigResponse:
        return await config.get_sandbox_config(self.gateway, request)

    @unary("ListSandboxPolicies")
    async def ListSandboxPolicies(
        self, request: openshell_pb2.ListSandboxPoliciesRequest, context: Any
    ) -> openshell_pb2.ListSandboxPoliciesResponse:
        return await policies.list_sandbox_policies(self.gateway, request)

    @unary("GetSandboxPolicyStatus")
    async def GetSandboxPolicyStatus(
        self, request: openshell_pb2.GetSandboxPolicyStatusRequest, context: Any
    ) -> openshell_pb2.GetSandboxPolicyStatusResponse:
        return await policies.get_sandbox_policy_status(self.gateway, request)

    @unary("ReportPolicyStatus")
    async def ReportPolicyStatus(
        self, request: openshell_pb2.ReportPolicyStatusRequest, context: Any
    ) -> openshell_pb2.ReportPolicyStatusResponse:
        return await policies.report_policy_status(self.gateway, request)

    @unary("SubmitPolicyAnalysis")
    async def SubmitPolicyAnalysis(
        self, request: openshell_pb2.SubmitPolicyAnalysisRequest, context: Any
    ) -> openshell_pb2.SubmitPolicyAnalysisResponse:
        return await drafts.submit_policy_analysis(self.gateway, request)

    @unary("GetDraftPolicy")
    async def GetDraftPolicy(
        self, request: openshell_pb2.GetDraftPolicyRequest, context: Any
    ) -> openshell_pb2.GetDraftPolicyResponse:
        return await drafts.get_draft_policy(self.gateway, request)

    @unary("ApproveDraftChunk")
    async def ApproveDraftChunk(
        self, request: openshell_pb2.ApproveDraftChunkRequest, context: Any
    ) -> openshell_pb2.ApproveDraftChunkResponse:
        return await drafts.approve_draft_chunk(self.gateway, request)

    @unary("RejectDraftChunk")
    async def RejectDraftChunk(
        self, request: openshell_pb2.RejectDraftChunkRequest, context: Any
    ) -> openshell_pb2.RejectDraftChunkResponse:
        return await drafts.reject_draft_chunk(self.gateway, request)

    @unary("ApproveAllDraftChunks")
    async def ApproveAllDraftChunks(
        self, request: openshell_pb2.ApproveAllDraftChunksRequest, context: Any
    ) -> openshell_pb2.ApproveAllDraftChunksResponse:
        return await drafts.approve_all_draft_chunks(self.gateway, request)

    @unary("EditDraftChunk")
    async def EditDraftChunk(
        self, request: openshell_pb2.EditDraftChunkRequest, context: Any
    ) -> openshell_pb2.EditDraftChunkResponse:
        return await drafts.edit_draft_chunk(self.gateway, request)

    @unary("UndoDraftChunk")
    async def UndoDraftChunk(
        self, request: openshell_pb2.UndoDraftChunkRequest, context: Any
    ) -> openshell_pb2.UndoDraftChunkResponse:
        return await drafts.undo_draft_chunk(self.gateway, request)

    @unary("ClearDraftChunks")
    async def ClearDraftChunks(
        self, request: openshell_pb2.ClearDraftChunksRequest, context: Any
    ) -> openshell_pb2.ClearDraftChunksResponse:
        return await drafts.clear_draft_chunks(self.gateway, request)

    @unary("GetDraftHistory")
    async def GetDraftHistory(
        self, request: openshell_pb2.GetDraftHistoryRequest, context: Any
    ) -> openshell_pb2.GetDraftHistoryResponse:
        return await drafts.get_draft_history(self.gateway, request)


def _version() -> str:
    from shellgate import __version__

    return __version__
