"""Worker processes that act as gateway replicas for the control-plane races.

Each worker opens its own store on the shared database (a real SQLite file shared by the
processes, or one Postgres database), builds a gateway over it with a fake driver, waits at
the barrier of ``tests.support.racing`` and calls the RPC handlers themselves, round after
round: what the servicer would run, minus the socket. A worker may be told to remove one
guard (``UNGUARD``) inside its own process only; the race test's companion shows that its
assertion then fails.

Plain functions at module level, so the ``spawn`` start method can import them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from shellgate.api import datamodel_pb2, openshell_pb2
from shellgate.controller.auth.principal import ANONYMOUS_ADMIN, CURRENT_PRINCIPAL
from shellgate.controller.gateway import Gateway
from shellgate.controller.metrics import Metrics
from shellgate.controller.service import credentials, profiles, providers, sandboxes, templates
from shellgate.reconcilers import refresh as refresh_rules
from shellgate.store import DEFAULT_WORKSPACE, Store, connect, sql
from shellgate.store.records import ObjectRecord
from shellgate.store.repositories import PROFILE_TYPE, TEMPLATE_TYPE
from shellgate.store.secrets import Keyring, SecretSealer
from tests.support.fake_driver import FakeDriver
from tests.support.racing import wait_for_the_others

P = openshell_pb2
WIDEN_SECONDS = 0.05
"""How long a protocol pauses at its hook point in these races: long enough that the other
replicas' requests land inside the window the guard must close, on any machine."""


async def widen(_key: str) -> None:
    await asyncio.sleep(WIDEN_SECONDS)


def replica(store: Store, key: bytes, replica_id: str) -> Gateway:
    return Gateway(
        store=store,
        driver=FakeDriver(),
        metrics=Metrics(),
        replica_id=replica_id,
        sealer=SecretSealer(Keyring([key])),
    )


# --- guards a companion removes ---------------------------------------------------------------


def _create_replaces_sql() -> None:
    """MUST_CREATE overwrites the row holding the name instead of failing (statements are
    rendered when the store opens: this one runs before ``connect``)."""
    sql.must_create_on_duplicate = lambda: (  # type: ignore[assignment]
        "ON CONFLICT (object_type, workspace, name) WHERE name IS NOT NULL "
        "DO UPDATE SET payload = excluded.payload"
    )


def _no_template_fence(gw: Gateway) -> None:
    async def no_fence(_name: str, _workspace: str) -> None:
        return None

    gw.repos.templates.fence = no_fence  # type: ignore[method-assign]


def _template_delete_at_current_version(gw: Gateway) -> None:
    repository = gw.repos.templates

    async def delete_current(record: ObjectRecord) -> bool:
        fresh = await repository.store.get(TEMPLATE_TYPE, record.id)
        if fresh is None:
            return False
        return await repository.store.delete_if(TEMPLATE_TYPE, fresh.id, fresh.resource_version)

    repository._delete_at_version_read = delete_current  # type: ignore[method-assign]


BEFORE_CONNECT = {"create-replaces"}


def _no_profile_fence(gw: Gateway) -> None:
    async def no_fence(_id: str, _workspace: str) -> None:
        return None

    gw.repos.profiles.fence = no_fence  # type: ignore[method-assign]


def _profile_delete_at_current_version(gw: Gateway) -> None:
    repository = gw.repos.profiles

    async def delete_current(record: ObjectRecord) -> bool:
        fresh = await repository.store.get(PROFILE_TYPE, record.id)
        if fresh is None:
            return False
        return await repository.store.delete_if(PROFILE_TYPE, fresh.id, fresh.resource_version)

    repository._delete_at_version_read = delete_current  # type: ignore[method-assign]


def _rotation_without_id_check(_gw: Gateway) -> None:
    """Every rotation counts, whether the row already recorded its request id or not."""

    original = refresh_rules.RotationChange.__call__

    def count_always(self: refresh_rules.RotationChange, config: Any) -> Any:
        del config.applied_request_ids[:]  # the history the check consults, forgotten
        return original(self, config)

    refresh_rules.RotationChange.__call__ = count_always  # type: ignore[method-assign]


UNGUARD: dict[str, Callable[[Gateway], None]] = {
    "rotation-without-id-check": _rotation_without_id_check,
    "no-profile-fence": _no_profile_fence,
    "profile-delete-at-current-version": _profile_delete_at_current_version,
    "": lambda _gw: None,
    "create-replaces": lambda _gw: None,
    "no-template-fence": _no_template_fence,
    "template-delete-at-current-version": _template_delete_at_current_version,
}


# --- requests ---------------------------------------------------------------------------------


def workload_template(name: str) -> P.SandboxWorkloadTemplate:
    made = P.SandboxWorkloadTemplate()
    made.metadata.name = name
    made.spec.workload.image = "ghcr.io/example/base:1"
    return made


async def create_template(gw: Gateway, round_: int, client: int) -> Any:
    request = P.CreateSandboxTemplateRequest(template=workload_template(f"t{round_}"))
    request.template.spec.workload.environment["WRITER"] = str(client)
    return await templates.create_sandbox_template(gw, request)


async def delete_template(gw: Gateway, round_: int, _client: int) -> Any:
    request = P.DeleteSandboxTemplateRequest(name=f"t{round_}")
    return await templates.delete_sandbox_template(gw, request)


async def create_from_template(gw: Gateway, round_: int, client: int) -> Any:
    """Starts at a random moment within two windows, so some rounds the delete finishes
    first (the create finds no template) and some the create lands inside its window."""
    await asyncio.sleep(random.uniform(0, 2 * WIDEN_SECONDS))
    request = P.CreateSandboxRequest(
        name=f"s{round_}-{client}", spec=P.SandboxSpec(), workload_template=f"t{round_}"
    )
    return await sandboxes.create_sandbox(gw, request)


def custom_profile(round_: int) -> P.ProviderProfile:
    made = P.ProviderProfile(id=f"acme{round_}", display_name="Acme")
    made.credentials.add(name="token", env_vars=["ACME_TOKEN"])
    return made


async def delete_profile(gw: Gateway, round_: int, _client: int) -> Any:
    request = P.DeleteProviderProfileRequest(id=f"acme{round_}")
    return await profiles.delete_provider_profile(gw, request)


async def create_provider(gw: Gateway, round_: int, client: int) -> Any:
    """Starts at a random moment within two windows (see ``create_from_template``)."""
    await asyncio.sleep(random.uniform(0, 2 * WIDEN_SECONDS))
    made = datamodel_pb2.Provider(type=f"acme{round_}", credentials={"ACME_TOKEN": "x"})
    made.metadata.name = f"p{round_}-{client}"
    seen: list[bool] = []
    check = gw.repos.profiles.is_custom

    async def recording(profile_id: str, workspace: str) -> bool:
        seen.append(await check(profile_id, workspace))
        return seen[-1]

    gw.repos.profiles.is_custom = recording  # type: ignore[method-assign]
    try:
        await providers.create_provider(gw, P.CreateProviderRequest(provider=made))
    finally:
        gw.repos.profiles.is_custom = check  # type: ignore[method-assign]
    # Types are free-form: a create that found no custom profile (the delete came first)
    # simply makes a provider of an unknown type. Only one that used the profile counts.
    return "custom" if seen and seen[-1] else "free"


async def rotate(gw: Gateway, round_: int, _client: int) -> Any:
    """Every client sends the round's one request id."""
    request = P.RotateProviderCredentialRequest(
        provider="rotating", credential_key="TOKEN", request_id=f"req{round_}"
    )
    return await credentials.rotate_provider_credential(gw, request)


CALLS: dict[str, Callable[[Gateway, int, int], Awaitable[Any]]] = {
    "rotate": rotate,
    "delete-profile": delete_profile,
    "create-provider": create_provider,
    "create-template": create_template,
    "delete-template": delete_template,
    "create-from-template": create_from_template,
}


def _widen_windows(gw: Gateway) -> None:
    """Pause every protocol at the point its guard covers (see ``WIDEN_SECONDS``)."""
    gw.repos.templates.hooks.after_reference_scan = widen
    gw.repos.profiles.hooks.after_reference_scan = widen
    gw.repos.refresh.hooks.before_rotation = widen


def run_replica(
    url: str, key: bytes, kind: str, client: int, rounds: int, unguard: str
) -> list[tuple[int, str]]:
    """``rounds`` calls of ``kind``, each after the barrier; (round, outcome) per call, the
    outcome being "OK" or the error's class name."""

    async def run() -> list[tuple[int, str]]:
        if unguard in BEFORE_CONNECT:
            _create_replaces_sql()
        store = await connect(url)
        gw = replica(store, key, f"r{client}")
        # As `serve` starts a replica without authentication: `default` exists and every
        # call is the anonymous platform admin's.
        await gw.repos.workspaces.ensure(DEFAULT_WORKSPACE)
        CURRENT_PRINCIPAL.set(ANONYMOUS_ADMIN)
        UNGUARD[unguard](gw)
        _widen_windows(gw)
        outcomes = []
        try:
            for round_ in range(rounds):
                wait_for_the_others()
                try:
                    result = await CALLS[kind](gw, round_, client)
                    marker = f":{result}" if isinstance(result, str) else ""
                    outcomes.append((round_, "OK" + marker))
                except Exception as error:  # the race test judges every outcome
                    outcomes.append((round_, type(error).__name__))
        finally:
            await store.close()
        return outcomes

    return asyncio.run(run())
