"""Provider profiles through a real gRPC socket, on SQLite and Postgres: built-in and custom
profiles, lint without storing, import all or nothing, update by CAS, and delete refused
while a provider uses the profile, fenced against a concurrent CreateProvider (forced
interleavings, with companions that remove each guard)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from shellgate.api import datamodel_pb2, openshell_pb2, sandbox_pb2
from shellgate.reconcilers.profiles import BUILTIN_PROFILES
from shellgate.store.records import ObjectRecord
from shellgate.store.repositories import PROFILE_TYPE, ProfileRepository
from tests.config.helpers import failure
from tests.support.gateway import Running
from tests.support.hooks import Gate
from tests.support.unguard import fence_checks_existence_only

P = openshell_pb2


def profile(profile_id: str = "acme", **kw: Any) -> P.ProviderProfile:
    made = P.ProviderProfile(id=profile_id, display_name="Acme", **kw)
    made.credentials.add(name="token", env_vars=["ACME_TOKEN"], required=True)
    made.endpoints.append(sandbox_pb2.NetworkEndpoint(host="api.acme.dev", port=443))
    return made


def items(*profiles: P.ProviderProfile) -> list[P.ProviderProfileImportItem]:
    return [P.ProviderProfileImportItem(profile=p, source=f"{p.id}.yaml") for p in profiles]


async def import_(gw: Running, *profiles: P.ProviderProfile) -> P.ImportProviderProfilesResponse:
    return await gw.stub.ImportProviderProfiles(
        P.ImportProviderProfilesRequest(profiles=items(*profiles))
    )


async def create_provider(gw: Running, name: str, kind: str) -> Any:
    message = datamodel_pb2.Provider(type=kind, credentials={"ACME_TOKEN": "x"})
    message.metadata.name = name
    try:
        return await gw.stub.CreateProvider(P.CreateProviderRequest(provider=message))
    except grpc.aio.AioRpcError as error:
        return error


async def stored(gw: Running) -> list[str]:
    page = await gw.gateway.store.list(PROFILE_TYPE, workspace=None, limit=1000)
    return sorted(r.name or "" for r in page.records)


async def test_builtins_are_listed_and_readable_but_fixed(gw: Running) -> None:
    listed = await gw.stub.ListProviderProfiles(P.ListProviderProfilesRequest())
    assert [p.id for p in listed.profiles] == list(BUILTIN_PROFILES)
    github = (await gw.stub.GetProviderProfile(P.GetProviderProfileRequest(id="github"))).profile
    assert github.source == "builtin" and github.credentials[0].env_vars == [
        "GITHUB_TOKEN",
        "GH_TOKEN",
    ]
    error = await failure(
        gw.stub.DeleteProviderProfile(P.DeleteProviderProfileRequest(id="github"))
    )
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "provider profile 'github' is managed by source 'builtin' and cannot be deleted",
    )
    clash = await import_(gw, profile("github"))
    assert not clash.imported and "cannot be overwritten" in clash.diagnostics[0].message


async def test_lint_validates_without_storing(gw: Running) -> None:
    good = await gw.stub.LintProviderProfiles(
        P.LintProviderProfilesRequest(profiles=items(profile()))
    )
    assert good.valid and list(good.diagnostics) == []
    bad = profile("Bad_Id")
    bad.credentials.add(name="token", env_vars=["ACME_TOKEN", "1BAD"])
    bad.endpoints.append(sandbox_pb2.NetworkEndpoint(host="", port=0))
    linted = await gw.stub.LintProviderProfiles(P.LintProviderProfilesRequest(profiles=items(bad)))
    assert not linted.valid
    assert sorted((d.field, d.message) for d in linted.diagnostics) == sorted(
        [
            ("id", "id must be lowercase kebab-case using only a-z, 0-9, and '-'"),
            ("credentials[1].name", "duplicate credential name 'token'"),
            ("credentials[1].env_vars", "duplicate environment variable 'ACME_TOKEN'"),
            ("credentials[1].env_vars", "invalid environment variable '1BAD'"),
            ("endpoints[1].host", "endpoint host is required"),
            ("endpoints[1].port", "endpoint ports must be in 1..=65535"),
        ]
    )
    assert all(d.severity == "error" and d.source == "Bad_Id.yaml" for d in linted.diagnostics)
    empty = await gw.stub.LintProviderProfiles(P.LintProviderProfilesRequest())
    assert (
        not empty.valid
        and empty.diagnostics[0].message == "at least one provider profile is required"
    )
    assert await stored(gw) == []


async def test_import_is_all_or_nothing_and_must_create(gw: Running) -> None:
    partly_bad = await import_(gw, profile("one"), profile("Two"))
    assert not partly_bad.imported and await stored(gw) == []
    done = await import_(gw, profile("one"), profile("two"))
    assert done.imported and [p.resource_version for p in done.profiles] == [1, 1]
    assert await stored(gw) == ["one", "two"]
    again = await import_(gw, profile("two"), profile("three"))
    assert not again.imported
    assert [d.message for d in again.diagnostics] == [
        "provider profile 'two' already exists; update it instead"
    ]
    assert await stored(gw) == ["one", "two"]
    listed = await gw.stub.ListProviderProfiles(P.ListProviderProfilesRequest(page_size=4))
    rest = await gw.stub.ListProviderProfiles(
        P.ListProviderProfilesRequest(page_token=listed.next_page_token)
    )
    assert [p.id for p in [*listed.profiles, *rest.profiles]] == [*BUILTIN_PROFILES, "one", "two"]


async def test_update_is_cas_at_the_version_sent(gw: Running) -> None:
    created = (await import_(gw, profile())).profiles[0]
    changed = profile(description="v2")
    changed.resource_version = created.resource_version
    request = P.UpdateProviderProfilesRequest(
        id="acme", profile=P.ProviderProfileImportItem(profile=changed)
    )
    updated = await gw.stub.UpdateProviderProfiles(request)
    assert updated.updated and updated.profile.resource_version == 2
    assert updated.profile.description == "v2"
    stale = await failure(gw.stub.UpdateProviderProfiles(request))
    assert stale.code() == grpc.StatusCode.ABORTED
    no_version = P.UpdateProviderProfilesRequest(
        id="acme", profile=P.ProviderProfileImportItem(profile=profile())
    )
    refused = await gw.stub.UpdateProviderProfiles(no_version)
    assert not refused.updated and refused.diagnostics[0].field == "resource_version"
    got = await gw.stub.GetProviderProfile(P.GetProviderProfileRequest(id="acme"))
    assert got.profile.description == "v2" and got.profile.resource_version == 2


async def test_a_profile_in_use_is_not_deleted(gw: Running) -> None:
    await import_(gw, profile())
    created = await create_provider(gw, "p1", "Acme ")
    assert not isinstance(created, grpc.aio.AioRpcError), created
    error = await failure(gw.stub.DeleteProviderProfile(P.DeleteProviderProfileRequest(id="acme")))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "provider profile 'acme' is in use by providers: p1",
    )
    await gw.stub.DeleteProvider(P.DeleteProviderRequest(name="p1"))
    done = await gw.stub.DeleteProviderProfile(P.DeleteProviderProfileRequest(id="acme"))
    assert done.outcome == P.DELETION_OUTCOME_COMPLETED
    absent = await gw.stub.DeleteProviderProfile(
        P.DeleteProviderProfileRequest(id="acme", allow_missing=True)
    )
    assert absent.outcome == P.DELETION_OUTCOME_ALREADY_ABSENT


# --- profile delete versus provider create, forced --------------------------------------------


@dataclass
class ProfileRace:
    creation: Any
    deletion: Any
    provider_exists: bool
    profile_exists: bool


def ok(result: Any) -> bool:
    return not isinstance(result, grpc.aio.AioRpcError)


async def observe(gw: Running, creation: Any, deletion: Any) -> ProfileRace:
    provider = await gw.gateway.repos.providers.find("p1", "default")
    profile_row = await gw.gateway.repos.profiles.find("acme", "default")
    return ProfileRace(creation, deletion, provider is not None, profile_row is not None)


def check_no_provider_of_a_deleted_profile(race: ProfileRace) -> None:
    for result in (race.creation, race.deletion):
        if not ok(result):
            assert result.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ABORTED)
    assert not (ok(race.creation) and ok(race.deletion)), "both the create and the delete"
    assert race.profile_exists or not race.provider_exists, "a provider of a deleted profile"


async def create_inside_delete(gw: Running) -> ProfileRace:
    await import_(gw, profile())
    gate = Gate()
    gw.gateway.repos.profiles.hooks.after_reference_scan = gate
    request = P.DeleteProviderProfileRequest(id="acme")
    deleting = await gate.hold(_outcome(gw.stub.DeleteProviderProfile(request)))
    created = await create_provider(gw, "p1", "acme")
    assert ok(created), created
    gate.release()
    return await observe(gw, created, await deleting)


async def delete_inside_create(gw: Running) -> ProfileRace:
    await import_(gw, profile())
    gate = Gate()
    gw.gateway.repos.profiles.hooks.before_user_write = gate
    creating = await gate.hold(create_provider(gw, "p1", "acme"))
    deleted = await _outcome(
        gw.stub.DeleteProviderProfile(P.DeleteProviderProfileRequest(id="acme"))
    )
    gate.release()
    return await observe(gw, await creating, deleted)


async def _outcome(call: Any) -> Any:
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        return error


RACES = {"create-inside-delete": create_inside_delete, "delete-inside-create": delete_inside_create}


@pytest.mark.parametrize("race", sorted(RACES))
async def test_forced_profile_race_leaves_no_provider_of_a_deleted_profile(
    gw: Running, race: str
) -> None:
    check_no_provider_of_a_deleted_profile(await RACES[race](gw))


def without_fence_write(gw: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    fence_checks_existence_only(gw.gateway.repos.profiles, PROFILE_TYPE, monkeypatch)


def without_fence(gw: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_fence(_id: str, _workspace: str) -> None:
        return None

    monkeypatch.setattr(gw.gateway.repos.profiles, "fence", no_fence)


def without_delete_version(gw: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    repository: ProfileRepository = gw.gateway.repos.profiles

    async def delete_current(record: ObjectRecord) -> bool:
        fresh = await repository.store.get(PROFILE_TYPE, record.id)
        if fresh is None:
            return False
        return await repository.store.delete_if(PROFILE_TYPE, fresh.id, fresh.resource_version)

    monkeypatch.setattr(repository, "_delete_at_version_read", delete_current)


COMPANIONS: dict[str, tuple[str, Callable[[Running, pytest.MonkeyPatch], None]]] = {
    "create-inside-delete/no-fence-write": ("create-inside-delete", without_fence_write),
    "create-inside-delete/no-delete-version": ("create-inside-delete", without_delete_version),
    "delete-inside-create/no-fence": ("delete-inside-create", without_fence),
}


@pytest.mark.parametrize("companion", sorted(COMPANIONS))
async def test_profile_race_fails_without_its_guard(
    gw: Running, monkeypatch: pytest.MonkeyPatch, companion: str
) -> None:
    race, unguard = COMPANIONS[companion]
    unguard(gw, monkeypatch)
    result = await RACES[race](gw)
    with pytest.raises(AssertionError):
        check_no_provider_of_a_deleted_profile(result)
