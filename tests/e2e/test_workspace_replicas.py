"""Workspace RPCs raced across `serve` replicas on one Postgres: client processes released
together by a ``multiprocessing.Barrier`` call two replicas through real gRPC, round after
round. (The same races are forced interleaving by interleaving, with companions that remove
each guard, in tests/gateway/test_workspace_races.py and tests/store/test_workspace_races.py;
here they run with whatever timing processes and the database give.)
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from shellgate.api import datamodel_pb2, openshell_pb2, openshell_pb2_grpc
from tests.e2e.test_cross_process_races import run_clients
from tests.support.processes import GatewayProcess, gateways

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
P = openshell_pb2
ROUNDS = 12


def replicas(pg_dsn: str, tmp_path: Path) -> list[GatewayProcess]:
    return [GatewayProcess(pg_dsn, tmp_path / f"r{n}", replica_id=f"r{n}") for n in (1, 2)]


async def test_members_added_and_removed_on_two_replicas(pg_dsn: str, tmp_path: Path) -> None:
    async with gateways(replicas(pg_dsn, tmp_path)) as running:
        channel = grpc.aio.insecure_channel(running[0].address)
        stub = openshell_pb2_grpc.OpenShellStub(channel)
        try:
            await stub.CreateWorkspace(P.CreateWorkspaceRequest(name="team"))
            plan = [(running[0].address, "add-member", 0), (running[1].address, "add-member", 1)]
            added = await asyncio.to_thread(run_clients, plan, ROUNDS, [])
            listed = await stub.ListWorkspaceMembers(
                P.ListWorkspaceMembersRequest(
                    workspace_scope=datamodel_pb2.WorkspaceSelector(workspace="team"),
                    page_size=100,
                )
            )
            plan = [
                (running[0].address, "remove-member", 0),
                (running[1].address, "remove-member", 1),
            ]
            removed = await asyncio.to_thread(run_clients, plan, ROUNDS, [])
            after = await stub.ListWorkspaceMembers(
                P.ListWorkspaceMembersRequest(
                    workspace_scope=datamodel_pb2.WorkspaceSelector(workspace="team")
                )
            )
        finally:
            await channel.close()
    assert sorted(m.principal_subject for m in listed.members) == sorted(
        f"m{n}" for n in range(ROUNDS)
    )
    for round_ in range(ROUNDS):
        assert sorted(added[round_].values()) == ["ALREADY_EXISTS", "OK"], added[round_]
        assert sorted(removed[round_].values()) == ["NOT_FOUND", "OK"], removed[round_]
    assert list(after.members) == []


async def test_delete_against_create_on_two_replicas(pg_dsn: str, tmp_path: Path) -> None:
    """DeleteWorkspace on one replica, CreateSandbox in that workspace on the other, at once:
    afterwards a sandbox in ``w<n>`` means ``w<n>`` exists. (The create is the anonymous
    platform admin's, so a create that comes after a finished delete makes the workspace
    again; that is a workspace that exists, not a sandbox left in a deleted one.)"""
    async with gateways(replicas(pg_dsn, tmp_path)) as running:
        channel = grpc.aio.insecure_channel(running[0].address)
        stub = openshell_pb2_grpc.OpenShellStub(channel)
        try:
            for round_ in range(ROUNDS):
                await stub.CreateWorkspace(P.CreateWorkspaceRequest(name=f"w{round_}"))
            plan = [
                (running[0].address, "delete-workspace", 0),
                (running[1].address, "create-in-workspace", 1),
            ]
            codes = await asyncio.to_thread(run_clients, plan, ROUNDS, [])
            every = await stub.ListSandboxes(
                P.ListSandboxesRequest(
                    workspace_scope=datamodel_pb2.WorkspaceSelector(
                        all_workspaces=datamodel_pb2.AllWorkspaces()
                    ),
                    page_size=1000,
                )
            )
            workspaces = await stub.ListWorkspaces(P.ListWorkspacesRequest(page_size=1000))
        finally:
            await channel.close()
    existing = {w.metadata.name for w in workspaces.workspaces}
    holding = {s.metadata.workspace for s in every.sandboxes}
    assert holding <= existing, f"sandboxes in deleted workspaces: {sorted(holding - existing)}"
    allowed = {"OK", "FAILED_PRECONDITION", "NOT_FOUND", "ABORTED"}
    for by_client in codes.values():
        assert set(by_client.values()) <= allowed, by_client
    print(f"delete/create rounds: { {r: dict(c) for r, c in sorted(codes.items())} }")
