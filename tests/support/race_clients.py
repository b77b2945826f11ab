"""Client processes for cross-process races: each waits on a ``multiprocessing.Barrier``
before every call, so calls from several processes reach several gateway processes together.

A client runs ``rounds`` calls of one kind against one gateway address and puts
``(round, kind, status code name)`` for each on the result queue. Plain functions at module
level, so the ``spawn`` start method can import them in a fresh interpreter.
"""

from __future__ import annotations

import multiprocessing.synchronize
from multiprocessing.queues import Queue
from typing import Any

import grpc

from shellgate.api import datamodel_pb2, openshell_pb2, openshell_pb2_grpc

P = openshell_pb2
BARRIER_TIMEOUT = 60.0


def request_for(kind: str, round_: int, client: int) -> tuple[str, Any]:
    """The RPC name and request of ``kind`` in ``round_`` (names follow the test's setup)."""
    if kind == "attach":
        return "AttachSandboxProvider", P.AttachSandboxProviderRequest(
            sandbox=f"s{client}", provider=f"p{round_}"
        )
    if kind == "delete":
        return "DeleteProvider", P.DeleteProviderRequest(name=f"p{round_}")
    if kind == "approve":
        return "ApproveDraftChunk", P.ApproveDraftChunkRequest(
            sandbox="drafts", chunk_id=CHUNKS[round_]
        )
    if kind == "reject":
        return "RejectDraftChunk", P.RejectDraftChunkRequest(
            sandbox="drafts", chunk_id=CHUNKS[round_], reason="no"
        )
    if kind in ("add-member", "remove-member"):
        scope = datamodel_pb2.WorkspaceSelector(workspace="team")
        if kind == "add-member":
            return "AddWorkspaceMember", P.AddWorkspaceMemberRequest(
                workspace_scope=scope, principal_subject=f"m{round_}", role=P.WORKSPACE_ROLE_USER
            )
        return "RemoveWorkspaceMember", P.RemoveWorkspaceMemberRequest(
            workspace_scope=scope, principal_subject=f"m{round_}"
        )
    if kind == "delete-workspace":
        return "DeleteWorkspace", P.DeleteWorkspaceRequest(name=f"w{round_}")
    if kind == "create-in-workspace":
        return "CreateSandbox", P.CreateSandboxRequest(
            name="late",
            spec=P.SandboxSpec(),
            workspace_scope=datamodel_pb2.WorkspaceSelector(workspace=f"w{round_}"),
        )
    raise ValueError(kind)


CHUNKS: list[str] = []


def run_client(
    address: str,
    kind: str,
    client: int,
    rounds: int,
    chunks: list[str],
    barrier: multiprocessing.synchronize.Barrier,
    results: Queue[tuple[int, str, int, str]],
) -> None:
    CHUNKS[:] = chunks
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = openshell_pb2_grpc.OpenShellStub(channel)
        for round_ in range(rounds):
            method, request = request_for(kind, round_, client)
            barrier.wait(BARRIER_TIMEOUT)
            try:
                getattr(stub, method)(request, timeout=30)
                code = "OK"
            except grpc.RpcError as error:
                code = error.code().name  # type: ignore[attr-defined]
            results.put((round_, kind, client, code))
