"""The ``openshell.v1.OpenShell`` servicer: one table from RPC name to handler.

``rpc`` gives every unary RPC the same shell: time it, count it by status code, and turn any
error into a rich gRPC status through ``errors.status_for``. Each handler takes the gateway
and the request and returns the whole response. Methods not listed answer UNIMPLEMENTED (the
generated base class does that).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from shellgate.api import openshell_pb2, openshell_pb2_grpc
from shellgate.controller.gateway import Gateway
from shellgate.controller.service import (
    config,
    drafts,
    exec,
    policies,
    providers,
    sandboxes,
    watch_sandbox,
)
from shellgate.controller.service.errors import status_for
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

    async def serve(
        self: OpenShellService, request: Req, context: grpc.aio.ServicerContext
    ) -> Resp:
        started = time.perf_counter()
        code = "OK"
        try:
            with deadline_in(context.time_remaining()):
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
    return serve


async def health(gw: Gateway, request: openshell_pb2.HealthRequest) -> openshell_pb2.HealthResponse:
    await gw.store.ping()
    return openshell_pb2.HealthResponse(
        status=openshell_pb2.SERVICE_STATUS_HEALTHY, version=_version()
    )


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

    async def WatchSandbox(
        self, request: openshell_pb2.WatchSandboxRequest, context: grpc.aio.ServicerContext
    ) -> Any:
        async for event in watch_sandbox.watch_sandbox(self.gateway, request, context):
            yield event

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

    # ----- providers ----------------------------------------------------------------------

    CreateProvider = rpc("CreateProvider", providers.create_provider)
    GetProvider = rpc("GetProvider", providers.get_provider)
    ListProviders = rpc("ListProviders", providers.list_providers)
    UpdateProvider = rpc("UpdateProvider", providers.update_provider)
    DeleteProvider = rpc("DeleteProvider", providers.delete_provider)

    # ----- config, policies and draft chunks ----------------------------------------------

    UpdateConfig = rpc("UpdateConfig", update_config)
    GetSandboxConfig = rpc("GetSandboxConfig", config.get_sandbox_config)
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


def _version() -> str:
    from shellgate import __version__

    return __version__
