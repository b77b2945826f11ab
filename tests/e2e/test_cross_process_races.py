"""The provider-reference and chunk-decision races across processes: client processes
released together by a ``multiprocessing.Barrier`` call three `serve` processes on one
Postgres through real gRPC, round after round. (The same races are forced interleaving by
interleaving, with companions that remove each guard, in tests/gateway/test_forced_races.py;
here they run for real, with whatever timing processes and the database give.)
"""

from __future__ import annotations

import asyncio
import multiprocessing
from collections import defaultdict
from pathlib import Path

import grpc
import pytest

from shellgate.api import datamodel_pb2, openshell_pb2, openshell_pb2_grpc, sandbox_pb2
from tests.config.helpers import policy, proposal
from tests.support.processes import GatewayProcess, gateways
from tests.support.race_clients import run_client

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
P = openshell_pb2
ROUNDS = 12
REPLICAS = 3


def run_clients(
    plan: list[tuple[str, str, int]], rounds: int, chunks: list[str]
) -> dict[int, dict[tuple[str, int], str]]:
    """Run one client process per (address, kind, client); per round, every client's code."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(plan))
    results = context.Queue()
    processes = [
        context.Process(
            target=run_client, args=(address, kind, client, rounds, chunks, barrier, results)
        )
        for address, kind, client in plan
    ]
    for process in processes:
        process.start()
    by_round: dict[int, dict[tuple[str, int], str]] = defaultdict(dict)
    for _ in range(rounds * len(plan)):
        round_, kind, client, code = results.get(timeout=120)
        by_round[round_][(kind, client)] = code
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0, f"a client process failed: {process.exitcode}"
    return by_round


def replicas(pg_dsn: str, tmp_path: Path) -> list[GatewayProcess]:
    return [
        GatewayProcess(pg_dsn, tmp_path / f"r{n}", replica_id=f"r{n}")
        for n in range(1, REPLICAS + 1)
    ]


async def test_attaches_and_deletes_across_processes_never_dangle(
    pg_dsn: str, tmp_path: Path
) -> None:
    async with gateways(replicas(pg_dsn, tmp_path)) as running:
        channel = grpc.aio.insecure_channel(running[0].address)
        stub = openshell_pb2_grpc.OpenShellStub(channel)
        try:
            for client in range(2):
                await stub.CreateSandbox(
                    P.CreateSandboxRequest(name=f"s{client}", spec=P.SandboxSpec())
                )
            for round_ in range(ROUNDS):
                provider = datamodel_pb2.Provider(type="github", credentials={"T": "x"})
                provider.metadata.name = f"p{round_}"
                await stub.CreateProvider(P.CreateProviderRequest(provider=provider))
            plan = [
                (running[0].address, "attach", 0),
                (running[1].address, "attach", 1),
                (running[2].address, "delete", 2),
            ]
            codes = await asyncio.to_thread(run_clients, plan, ROUNDS, [])
            sandboxes = [
                (await stub.GetSandbox(P.GetSandboxRequest(name=f"s{c}"))).sandbox for c in range(2)
            ]
            listed = await stub.ListProviders(P.ListProvidersRequest(page_size=1000))
        finally:
            await channel.close()
    existing = {p.metadata.name for p in listed.providers}
    referenced = {name for sandbox in sandboxes for name in sandbox.spec.providers}
    assert referenced <= existing, f"dangling references: {referenced - existing}"
    for round_, by_client in codes.items():
        attached = [by_client[("attach", c)] == "OK" for c in range(2)]
        deleted = by_client[("delete", 2)] == "OK"
        assert not (any(attached) and deleted), f"round {round_}: {by_client}"
        assert set(by_client.values()) <= {"OK", "FAILED_PRECONDITION", "ABORTED"}, by_client
        assert deleted == (f"p{round_}" not in existing)
    print(f"attach/delete rounds: { {r: dict(c) for r, c in sorted(codes.items())} }")


async def test_approve_and_reject_across_processes_one_wins(pg_dsn: str, tmp_path: Path) -> None:
    async with gateways(replicas(pg_dsn, tmp_path)) as running:
        channel = grpc.aio.insecure_channel(running[0].address)
        other = grpc.aio.insecure_channel(running[2].address)
        stub = openshell_pb2_grpc.OpenShellStub(channel)
        try:
            spec = P.SandboxSpec()
            spec.policy.CopyFrom(policy())
            await stub.CreateSandbox(P.CreateSandboxRequest(name="drafts", spec=spec))
            proposals = [proposal(f"h{n}.example.com") for n in range(ROUNDS)]
            submitted = await stub.SubmitPolicyAnalysis(
                P.SubmitPolicyAnalysisRequest(name="drafts", proposed_chunks=proposals)
            )
            chunks = list(submitted.accepted_chunk_ids)
            assert len(chunks) == ROUNDS
            plan = [(running[0].address, "approve", 0), (running[1].address, "reject", 1)]
            codes = await asyncio.to_thread(run_clients, plan, ROUNDS, chunks)
            reader = openshell_pb2_grpc.OpenShellStub(other)
            final = await reader.GetDraftPolicy(P.GetDraftPolicyRequest(sandbox="drafts"))
            config = await reader.GetSandboxConfig(
                sandbox_pb2.GetSandboxConfigRequest(name="drafts")
            )
        finally:
            await channel.close()
            await other.close()
    status = {c.id: c.status for c in final.chunks}
    rule_of = {c.id: c.rule_name for c in final.chunks}
    in_policy = set(config.policy.network_policies)
    for round_, by_client in codes.items():
        approved, rejected = by_client[("approve", 0)], by_client[("reject", 1)]
        assert [approved, rejected].count("OK") == 1, f"round {round_}: {by_client}"
        assert "FAILED_PRECONDITION" in (approved, rejected), by_client
        winner = "approved" if approved == "OK" else "rejected"
        chunk_id = chunks[round_]
        assert status[chunk_id] == winner
        assert (rule_of[chunk_id] in in_policy) == (winner == "approved")
    print(f"approve/reject winners: {sorted(status.values())}")
