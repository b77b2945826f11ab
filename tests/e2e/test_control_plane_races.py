"""Control-plane races across OS processes, on SQLite (one file, several processes) and
Postgres: worker processes act as gateway replicas (``tests.support.replica_races``), are
released together at a ``multiprocessing.Barrier`` before each round, and call the RPC
handlers. Each race has companions that remove its guard inside the workers and show that
the race's own check then fails.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict

import pytest

from shellgate.api import datamodel_pb2, internal_pb2, openshell_pb2
from shellgate.controller.service import credentials, providers, templates
from shellgate.store import DEFAULT_WORKSPACE, Store, decode
from shellgate.store.repositories import REFRESH_TYPE, TEMPLATE_TYPE
from shellgate.store.secrets import KEY_BYTES
from tests.support.racing import run_in_processes
from tests.support.replica_races import (
    custom_profile,
    replica,
    run_replica,
    workload_template,
)

pytestmark = pytest.mark.slow
P = openshell_pb2
ROUNDS = 8

Plan = list[tuple[str, int]]  # (kind, client) per worker process


async def race(
    store_url: str, plan: Plan, rounds: int, unguard: str, key: bytes
) -> dict[int, dict[tuple[str, int], str]]:
    per_worker = await asyncio.to_thread(
        run_in_processes,
        run_replica,
        [(store_url, key, kind, client, rounds, unguard) for kind, client in plan],
    )
    by_round: dict[int, dict[tuple[str, int], str]] = defaultdict(dict)
    for (kind, client), outcomes in zip(plan, per_worker, strict=True):
        for round_, code in outcomes:
            by_round[round_][(kind, client)] = code
    return by_round


# --- two replicas create the same template name -----------------------------------------------


async def same_template_name(store: Store, store_url: str, unguard: str) -> None:
    plan = [("create-template", 0), ("create-template", 1)]
    codes = await race(store_url, plan, ROUNDS, unguard, secrets.token_bytes(KEY_BYTES))
    for round_, by_client in sorted(codes.items()):
        outcomes = sorted(by_client.values())
        assert outcomes == ["OK", "UniqueViolation"], f"round {round_}: {outcomes}"
    page = await store.list(TEMPLATE_TYPE, workspace=None, limit=1000)
    assert sorted(r.name or "" for r in page.records) == sorted(f"t{r}" for r in range(ROUNDS))


async def test_two_replicas_creating_one_template_name_have_one_winner(
    store: Store, store_url: str
) -> None:
    await same_template_name(store, store_url, "")


async def test_without_must_create_both_replicas_win(store: Store, store_url: str) -> None:
    with pytest.raises(AssertionError, match="round"):
        await same_template_name(store, store_url, "create-replaces")


# --- delete-template versus create-from-template ----------------------------------------------


async def delete_versus_create(store: Store, store_url: str, unguard: str) -> None:
    key = secrets.token_bytes(KEY_BYTES)
    gw = replica(store, key, "setup")
    await gw.repos.workspaces.ensure(DEFAULT_WORKSPACE)  # as `serve` starts
    for round_ in range(ROUNDS):
        request = P.CreateSandboxTemplateRequest(template=workload_template(f"t{round_}"))
        await templates.create_sandbox_template(gw, request)
    plan = [("delete-template", 0), ("create-from-template", 1), ("create-from-template", 2)]
    codes = await race(store_url, plan, ROUNDS, unguard, key)
    existing = {
        r.name for r in (await store.list(TEMPLATE_TYPE, workspace=None, limit=1000)).records
    }
    sandboxes, _ = await store.list_messages(P.Sandbox, workspace=None, limit=1000)
    named = {s.created_from_workload_template.name for s in sandboxes}
    dangling = named - existing
    assert not dangling, f"sandboxes built from deleted templates: {sorted(dangling)}"
    for round_, by_client in sorted(codes.items()):
        deleted = by_client[("delete-template", 0)] == "OK"
        built = [by_client[("create-from-template", c)] == "OK" for c in (1, 2)]
        assert not (deleted and any(built)), f"round {round_}: {by_client}"
        allowed = {"OK", "TemplateMissing", "TemplateInUse", "Conflict"}
        assert set(by_client.values()) <= allowed, by_client
    print(f"delete/create rounds: { {r: dict(c) for r, c in sorted(codes.items())} }")


async def test_delete_template_versus_create_from_it_never_dangles(
    store: Store, store_url: str
) -> None:
    await delete_versus_create(store, store_url, "")


@pytest.mark.parametrize("unguard", ["no-template-fence", "template-delete-at-current-version"])
async def test_delete_versus_create_dangles_without_its_guard(
    store: Store, store_url: str, unguard: str
) -> None:
    with pytest.raises(AssertionError, match=r"deleted templates|round"):
        await delete_versus_create(store, store_url, unguard)


# --- profile delete versus provider create ----------------------------------------------------


async def profile_versus_provider(store: Store, store_url: str, unguard: str) -> None:
    key = secrets.token_bytes(KEY_BYTES)
    gw = replica(store, key, "setup")
    await gw.repos.workspaces.ensure(DEFAULT_WORKSPACE)  # as `serve` starts
    for round_ in range(ROUNDS):
        await gw.repos.profiles.create(custom_profile(round_), "default")
    plan = [("delete-profile", 0), ("create-provider", 1), ("create-provider", 2)]
    codes = await race(store_url, plan, ROUNDS, unguard, key)
    existing = {p.id for p in await gw.repos.profiles.list_all("default")}
    made, _ = await store.list_messages(datamodel_pb2.Provider, workspace=None, limit=1000)
    users = {
        f"acme{round_}"
        for round_, by_client in codes.items()
        for (kind, _), code in by_client.items()
        if code == "OK:custom"
    }
    kept = {p.type for p in made}
    orphaned = (users & kept) - existing
    assert not orphaned, f"providers of deleted profiles: {sorted(orphaned)}"
    for round_, by_client in sorted(codes.items()):
        deleted = by_client[("delete-profile", 0)] == "OK"
        used = [by_client[("create-provider", c)] == "OK:custom" for c in (1, 2)]
        assert not (deleted and any(used)), f"round {round_}: {by_client}"
        allowed = {"OK", "OK:custom", "OK:free", "ProfileMissing", "ProfileInUse", "Conflict"}
        assert set(by_client.values()) <= allowed, by_client
    print(f"profile/provider rounds: { {r: dict(c) for r, c in sorted(codes.items())} }")


async def test_profile_delete_versus_provider_create_never_orphans(
    store: Store, store_url: str
) -> None:
    await profile_versus_provider(store, store_url, "")


@pytest.mark.parametrize("unguard", ["no-profile-fence", "profile-delete-at-current-version"])
async def test_profile_delete_versus_provider_create_orphans_without_its_guard(
    store: Store, store_url: str, unguard: str
) -> None:
    with pytest.raises(AssertionError, match=r"deleted profiles|round"):
        await profile_versus_provider(store, store_url, unguard)


# --- concurrent rotation requests with one request id -----------------------------------------


async def same_rotation_request(store: Store, store_url: str, unguard: str) -> None:
    key = secrets.token_bytes(KEY_BYTES)
    gw = replica(store, key, "setup")
    await gw.repos.workspaces.ensure(DEFAULT_WORKSPACE)  # as `serve` starts
    made = datamodel_pb2.Provider(type="github", credentials={"TOKEN": "x"})
    made.metadata.name = "rotating"
    await providers.create_provider(gw, P.CreateProviderRequest(provider=made))
    configure = P.ConfigureProviderRefreshRequest(
        provider="rotating",
        credential_key="TOKEN",
        strategy=P.PROVIDER_CREDENTIAL_REFRESH_STRATEGY_EXTERNAL,
    )
    await credentials.configure_provider_refresh(gw, configure)
    plan = [("rotate", 0), ("rotate", 1), ("rotate", 2)]
    codes = await race(store_url, plan, ROUNDS, unguard, key)
    for round_, by_client in sorted(codes.items()):
        assert set(by_client.values()) == {"OK"}, f"round {round_}: {by_client}"
    status = await credentials.get_provider_refresh_status(
        gw, P.GetProviderRefreshStatusRequest(provider="rotating")
    )
    page = await store.list(REFRESH_TYPE, workspace=None, limit=10)
    (row,) = [decode(internal_pb2.ProviderRefreshConfig, r) for r in page.records]
    assert row.rotations == ROUNDS, f"{row.rotations} rotations for {ROUNDS} request ids"
    assert status.credentials[0].status == "rotation_requested"


async def test_one_request_id_from_three_replicas_rotates_once(
    store: Store, store_url: str
) -> None:
    await same_rotation_request(store, store_url, "")


async def test_without_the_request_id_check_replicas_rotate_more_than_once(
    store: Store, store_url: str
) -> None:
    with pytest.raises(AssertionError, match="rotations for"):
        await same_rotation_request(store, store_url, "rotation-without-id-check")
