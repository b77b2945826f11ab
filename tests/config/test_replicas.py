"""Settings and merge operations through three `serve` processes on one Postgres.

Every replica takes writes for the same rows at the same time; only CAS (settings) and the
version index (revisions) keep them apart. Checked: every update that answered OK is in the
final configuration, a settings revision equals the number of changes made to it, and no
rule acknowledged to a client is lost.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import grpc
import pytest

from shellgate.api import openshell_pb2_grpc
from tests.config.helpers import (
    P,
    S,
    add_rule_op,
    bool_value,
    rule,
    setting,
)
from tests.support.processes import GatewayProcess, gateways

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

KEYS = [
    "providers_v2_enabled",
    "ocsf_json_enabled",
    "agent_policy_proposals_enabled",
    "dummy_bool",
    "dummy_int",
]
SETTINGS_PER_REPLICA = 40
MERGES_PER_REPLICA = 20
REPLICAS = 3


def value_for(key: str) -> S.SettingValue:
    return S.SettingValue(int_value=7) if key == "dummy_int" else bool_value(True)


async def ok_or_aborted(call: object) -> bool:
    try:
        await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.ABORTED, error
        return False
    return True


async def test_settings_and_merges_across_three_replicas(pg_dsn: str, tmp_path: Path) -> None:
    replicas = [
        GatewayProcess(pg_dsn, tmp_path / f"r{n}", replica_id=f"r{n}")
        for n in range(1, REPLICAS + 1)
    ]
    async with gateways(replicas):
        channels = [grpc.aio.insecure_channel(r.address) for r in replicas]
        stubs = [openshell_pb2_grpc.OpenShellStub(c) for c in channels]
        try:
            await _settings_phase(stubs)
            await _merge_phase(stubs)
        finally:
            for channel in channels:
                await channel.close()


async def _settings_phase(stubs: list[openshell_pb2_grpc.OpenShellStub]) -> None:
    """3 x 40 concurrent updates, each of a distinct (sandbox, key): 24 sandboxes x 5 keys,
    the five writers of one sandbox's row spread over the three replicas."""
    total = REPLICAS * SETTINGS_PER_REPLICA
    names = [f"s{n:02d}" for n in range(total // len(KEYS))]
    await asyncio.gather(
        *(
            stubs[n % REPLICAS].CreateSandbox(
                P.CreateSandboxRequest(name=name, spec=P.SandboxSpec())
            )
            for n, name in enumerate(names)
        )
    )
    updates = [(name, key) for name in names for key in KEYS]
    results = await asyncio.gather(
        *(
            ok_or_aborted(stubs[n % REPLICAS].UpdateConfig(setting(name, key, value_for(key))))
            for n, (name, key) in enumerate(updates)
        )
    )
    acknowledged = Counter(name for (name, _), ok in zip(updates, results, strict=True) if ok)
    assert sum(results) >= total * 0.9, f"only {sum(results)} of {total} updates answered OK"
    print(f"settings phase: {sum(results)} of {total} answered OK on the first call")
    for n, name in enumerate(names):
        final = await stubs[(n + 1) % REPLICAS].GetSandboxConfig(
            S.GetSandboxConfigRequest(name=name)
        )
        present = {k for k, s in final.settings.items() if s.scope == S.SETTING_SCOPE_SANDBOX}
        wanted = {
            key
            for (sandbox, key), ok in zip(updates, results, strict=True)
            if ok and sandbox == name
        }
        assert wanted <= present, f"{name}: acknowledged {wanted}, stored {present}"
        assert final.settings_revision == len(present) == acknowledged[name]


async def _merge_phase(stubs: list[openshell_pb2_grpc.OpenShellStub]) -> None:
    """3 x 20 concurrent merge operations adding distinct rules to one sandbox."""
    await stubs[0].CreateSandbox(P.CreateSandboxRequest(name="shared", spec=P.SandboxSpec()))
    total = REPLICAS * MERGES_PER_REPLICA
    names = [f"rule{n:02d}" for n in range(total)]
    results = await asyncio.gather(
        *(
            ok_or_aborted(
                stubs[n % REPLICAS].UpdateConfig(
                    P.UpdateConfigRequest(
                        sandbox="shared",
                        merge_operations=[add_rule_op(name, rule(f"{name}.example.com"))],
                    )
                )
            )
            for n, name in enumerate(names)
        )
    )
    acknowledged = {name for name, ok in zip(names, results, strict=True) if ok}
    assert acknowledged, "no merge answered OK"
    final = await stubs[2].GetSandboxConfig(S.GetSandboxConfigRequest(name="shared"))
    assert acknowledged <= set(final.policy.network_policies), "an acknowledged rule was lost"
    listed = await stubs[1].ListSandboxPolicies(
        P.ListSandboxPoliciesRequest(sandbox="shared", page_size=1000)
    )
    versions = [r.version for r in listed.revisions]
    assert versions == list(range(len(acknowledged), 0, -1)), "one revision per acknowledged merge"
    assert final.version == len(acknowledged)
    print(f"merge phase: {len(acknowledged)} of {total} answered OK on the first call")
