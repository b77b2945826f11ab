"""Provider RPCs and sandbox-provider attachment, on SQLite and Postgres."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from shellgate.api import datamodel_pb2, openshell_pb2
from tests.gateway.conftest import Running

P = openshell_pb2
D = datamodel_pb2


def provider(name: str, **credentials: str) -> D.Provider:
    message = D.Provider(type="github", credentials=credentials or {"TOKEN": "secret"})
    message.metadata.name = name
    return message


async def create_provider(gw: Running, name: str) -> D.Provider:
    return (await gw.stub.CreateProvider(P.CreateProviderRequest(provider=provider(name)))).provider


async def create_sandbox(gw: Running, name: str) -> P.Sandbox:
    request = P.CreateSandboxRequest(name=name, spec=P.SandboxSpec())
    return (await gw.stub.CreateSandbox(request)).sandbox


async def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    return caught.value.code()


def opened(gw: Running, stored: D.Provider) -> dict[str, str]:
    """The stored credentials, opened with the gateway's own key."""
    values = dict(stored.credentials)
    gw.gateway.sealer.open_map(values, stored.metadata.id)
    return values


async def test_create_get_list_redact_credentials(gw: Running) -> None:
    created = await create_provider(gw, "gh")
    assert created.metadata.resource_version == 1
    assert dict(created.credentials) == {"TOKEN": "REDACTED"}
    got = (await gw.stub.GetProvider(P.GetProviderRequest(name="gh"))).provider
    assert dict(got.credentials) == {"TOKEN": "REDACTED"}
    listed = await gw.stub.ListProviders(P.ListProvidersRequest())
    assert [p.metadata.name for p in listed.providers] == ["gh"]
    stored = await gw.gateway.store.get_message_by_name(D.Provider, "gh")
    assert stored is not None and "secret" not in stored.credentials["TOKEN"]  # sealed at rest
    assert opened(gw, stored) == {"TOKEN": "secret"}


async def test_concurrent_create_provider_one_already_exists(gw: Running) -> None:
    results = await asyncio.gather(
        gw.stub.CreateProvider(P.CreateProviderRequest(provider=provider("dup"))),
        gw.stub.CreateProvider(P.CreateProviderRequest(provider=provider("dup"))),
        return_exceptions=True,
    )
    errors = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert [e.code() for e in errors] == [grpc.StatusCode.ALREADY_EXISTS]


async def test_update_provider_versions_and_client_driven_cas(gw: Running) -> None:
    await create_provider(gw, "gh")
    update = provider("gh", EXTRA="1")
    updated = (await gw.stub.UpdateProvider(P.UpdateProviderRequest(provider=update))).provider
    assert updated.metadata.resource_version == 2
    stale = provider("gh", MORE="2")
    stale.metadata.resource_version = 1
    assert await code_of(gw.stub.UpdateProvider(P.UpdateProviderRequest(provider=stale))) == (
        grpc.StatusCode.ABORTED
    )
    fresh = provider("gh", MORE="2")
    fresh.metadata.resource_version = 2
    third = (await gw.stub.UpdateProvider(P.UpdateProviderRequest(provider=fresh))).provider
    assert third.metadata.resource_version == 3
    stored = await gw.gateway.store.get_message_by_name(D.Provider, "gh")
    assert stored is not None
    assert opened(gw, stored) == {"TOKEN": "secret", "EXTRA": "1", "MORE": "2"}


async def test_invalid_update_is_rejected_and_nothing_written(gw: Running) -> None:
    await create_provider(gw, "gh")
    bad = provider("gh", **{"K" * 300: "v"})
    assert await code_of(gw.stub.UpdateProvider(P.UpdateProviderRequest(provider=bad))) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    changed_type = provider("gh")
    changed_type.type = "gitlab"
    assert (
        await code_of(gw.stub.UpdateProvider(P.UpdateProviderRequest(provider=changed_type)))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    record = await gw.gateway.store.get_by_name("provider", "gh")
    assert record is not None and record.resource_version == 1


async def test_concurrent_stale_provider_updates_one_wins(gw: Running) -> None:
    await create_provider(gw, "gh")

    def update(key: str) -> object:
        message = provider("gh", **{key: "v"})
        message.metadata.resource_version = 1
        return gw.stub.UpdateProvider(P.UpdateProviderRequest(provider=message))

    results = await asyncio.gather(*(update(f"K{n}") for n in range(3)), return_exceptions=True)
    codes = [r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert codes == [grpc.StatusCode.ABORTED] * 2
    record = await gw.gateway.store.get_by_name("provider", "gh")
    assert record is not None and record.resource_version == 2


async def test_attach_detach_and_list_sandbox_providers(gw: Running) -> None:
    await create_provider(gw, "gh")
    sandbox = await create_sandbox(gw, "alpha")
    attached = await gw.stub.AttachSandboxProvider(
        P.AttachSandboxProviderRequest(sandbox="alpha", provider="gh")
    )
    assert attached.attached and list(attached.sandbox.spec.providers) == ["gh"]
    assert attached.sandbox.metadata.resource_version > sandbox.metadata.resource_version
    again = await gw.stub.AttachSandboxProvider(
        P.AttachSandboxProviderRequest(sandbox="alpha", provider="gh")
    )
    assert not again.attached
    listed = await gw.stub.ListSandboxProviders(P.ListSandboxProvidersRequest(sandbox="alpha"))
    assert [p.metadata.name for p in listed.providers] == ["gh"]
    assert dict(listed.providers[0].credentials) == {"TOKEN": "REDACTED"}
    detached = await gw.stub.DetachSandboxProvider(
        P.DetachSandboxProviderRequest(sandbox="alpha", provider="gh")
    )
    assert detached.detached and list(detached.sandbox.spec.providers) == []


async def test_attach_errors(gw: Running) -> None:
    await create_sandbox(gw, "alpha")
    missing = P.AttachSandboxProviderRequest(sandbox="alpha", provider="nope")
    assert await code_of(gw.stub.AttachSandboxProvider(missing)) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    await create_provider(gw, "gh")
    no_sandbox = P.AttachSandboxProviderRequest(sandbox="ghost", provider="gh")
    assert await code_of(gw.stub.AttachSandboxProvider(no_sandbox)) == grpc.StatusCode.NOT_FOUND
    long_name = P.AttachSandboxProviderRequest(sandbox="alpha", provider="p" * 254)
    assert await code_of(gw.stub.AttachSandboxProvider(long_name)) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    stale = P.AttachSandboxProviderRequest(
        sandbox="alpha", provider="gh", expected_resource_version=99
    )
    assert await code_of(gw.stub.AttachSandboxProvider(stale)) == grpc.StatusCode.ABORTED


async def test_attach_beyond_32_providers_is_invalid_and_unchanged(gw: Running) -> None:
    await create_sandbox(gw, "alpha")
    for n in range(33):
        await create_provider(gw, f"p{n}")
    for n in range(32):
        await gw.stub.AttachSandboxProvider(
            P.AttachSandboxProviderRequest(sandbox="alpha", provider=f"p{n}")
        )
    before = await gw.gateway.store.get_by_name("sandbox", "alpha")
    extra = P.AttachSandboxProviderRequest(sandbox="alpha", provider="p32")
    assert await code_of(gw.stub.AttachSandboxProvider(extra)) == grpc.StatusCode.INVALID_ARGUMENT
    assert await gw.gateway.store.get_by_name("sandbox", "alpha") == before


async def test_three_client_driven_attaches_with_the_same_version(gw: Running) -> None:
    gw.driver.auto_ready = False  # no driver write may slip in between our read and the race
    sandbox = await create_sandbox(gw, "alpha")
    for n in range(3):
        await create_provider(gw, f"p{n}")
    version = (await gw.gateway.store.get("sandbox", sandbox.metadata.id)).resource_version  # type: ignore[union-attr]
    results = await asyncio.gather(
        *(
            gw.stub.AttachSandboxProvider(
                P.AttachSandboxProviderRequest(
                    sandbox="alpha", provider=f"p{n}", expected_resource_version=version
                )
            )
            for n in range(3)
        ),
        return_exceptions=True,
    )
    codes = [r.code() for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert codes == [grpc.StatusCode.ABORTED] * 2
    final = await gw.gateway.store.get_message(P.Sandbox, sandbox.metadata.id)
    assert final is not None and len(final.spec.providers) == 1
    assert final.metadata.resource_version == version + 1


async def test_delete_provider_refuses_while_attached(gw: Running) -> None:
    await create_provider(gw, "gh")
    await create_sandbox(gw, "alpha")
    await gw.stub.AttachSandboxProvider(
        P.AttachSandboxProviderRequest(sandbox="alpha", provider="gh")
    )
    assert await code_of(gw.stub.DeleteProvider(P.DeleteProviderRequest(name="gh"))) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    await gw.stub.DetachSandboxProvider(
        P.DetachSandboxProviderRequest(sandbox="alpha", provider="gh")
    )
    deleted = await gw.stub.DeleteProvider(P.DeleteProviderRequest(name="gh"))
    assert deleted.outcome == P.DELETION_OUTCOME_COMPLETED
    absent = await gw.stub.DeleteProvider(P.DeleteProviderRequest(name="gh", allow_missing=True))
    assert absent.outcome == P.DELETION_OUTCOME_ALREADY_ABSENT
    assert await code_of(gw.stub.DeleteProvider(P.DeleteProviderRequest(name="gh"))) == (
        grpc.StatusCode.NOT_FOUND
    )


async def test_delete_provider_racing_attaches_never_leaves_a_dangling_reference(
    gw: Running,
) -> None:
    """Repeatedly race one delete against one attach: either the attach fails, or the
    delete refuses; never both succeed."""
    for round_ in range(15):
        name = f"gh{round_}"
        await create_provider(gw, name)
        await create_sandbox(gw, f"s{round_}")
        attach = gw.stub.AttachSandboxProvider(
            P.AttachSandboxProviderRequest(sandbox=f"s{round_}", provider=name)
        )
        delete = gw.stub.DeleteProvider(P.DeleteProviderRequest(name=name))
        attach_result, delete_result = await asyncio.gather(attach, delete, return_exceptions=True)
        attach_ok = not isinstance(attach_result, Exception) and attach_result.attached
        delete_ok = not isinstance(delete_result, Exception)
        assert not (attach_ok and delete_ok), f"round {round_}: both succeeded"
        sandbox = await gw.gateway.store.get_message_by_name(P.Sandbox, f"s{round_}")
        provider_row = await gw.gateway.store.get_by_name("provider", name)
        assert sandbox is not None
        if name in sandbox.spec.providers:
            assert provider_row is not None, f"round {round_}: dangling reference"


async def test_many_attaches_and_deletes_racing_never_leave_a_dangling_reference(
    gw: Running,
) -> None:
    """Per round, four attaches of one provider (to four sandboxes) and two deletes of it at
    once: a delete that answered OK means no attach did and no sandbox references it."""
    sandboxes = [f"m{k}" for k in range(4)]
    for name in sandboxes:
        await create_sandbox(gw, name)
    for round_ in range(8):
        provider_name = f"many{round_}"
        await create_provider(gw, provider_name)
        attaches = [
            gw.stub.AttachSandboxProvider(
                P.AttachSandboxProviderRequest(sandbox=name, provider=provider_name)
            )
            for name in sandboxes
        ]
        deletes = [
            gw.stub.DeleteProvider(P.DeleteProviderRequest(name=provider_name)) for _ in range(2)
        ]
        results = await asyncio.gather(*attaches, *deletes, return_exceptions=True)
        for result in results:
            if isinstance(result, grpc.aio.AioRpcError):
                assert result.code() in (
                    grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.ABORTED,
                    grpc.StatusCode.NOT_FOUND,  # the other delete won
                ), result
        attached = any(not isinstance(r, Exception) and r.attached for r in results[:4])
        deleted = any(not isinstance(r, Exception) for r in results[4:])
        assert not (attached and deleted), f"round {round_}: {results}"
        provider_row = await gw.gateway.store.get_by_name("provider", provider_name)
        for name in sandboxes:
            sandbox = await gw.gateway.store.get_message_by_name(P.Sandbox, name)
            assert sandbox is not None
            if provider_name in sandbox.spec.providers:
                assert provider_row is not None, f"round {round_}: dangling reference"


async def test_credentials_sealed_under_an_unknown_key_are_a_failed_precondition(
    gw: Running,
) -> None:
    """A gateway started without the key its rows were sealed under (a key removed before a
    rotation finished) answers FAILED_PRECONDITION naming the cause, never INTERNAL."""
    from shellgate.store.secrets import KEY_BYTES, Keyring
    from shellgate.store.secrets import SecretSealer as Sealer

    await create_provider(gw, "gh")
    gw.gateway.repos.providers.sealer = Sealer(Keyring([b"k" * KEY_BYTES]))
    update = provider("gh")
    update.ClearField("credentials")
    update.config["region"] = "eu"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await gw.stub.UpdateProvider(P.UpdateProviderRequest(provider=update))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot be opened" in (refused.value.details() or "")


async def test_attaches_to_one_shared_provider_do_not_conflict(gw: Running) -> None:
    """Sixteen attaches of one provider to sixteen sandboxes at once: every one answers OK on
    its first try, and the provider's fences never retry. Each fence moves the provider's
    version on from wherever the last one left it (one statement, conditioned on the row's
    existence), and fences asked for while one runs share the next (``SharedFences``), so the
    version moved at least once and at most once per attach; a fence that re-wrote the
    provider at the version it read would have lost races here and retried or aborted."""
    created = await create_provider(gw, "shared")
    names = [f"c{n}" for n in range(16)]
    for name in names:
        await create_sandbox(gw, name)
    results = await asyncio.gather(
        *(
            gw.stub.AttachSandboxProvider(
                P.AttachSandboxProviderRequest(sandbox=name, provider="shared")
            )
            for name in names
        ),
        return_exceptions=True,
    )
    assert all(not isinstance(r, Exception) and r.attached for r in results), results
    stored = await gw.gateway.store.get_by_name("provider", "shared")
    assert stored is not None
    moves = stored.resource_version - created.metadata.resource_version
    assert 1 <= moves <= len(names)
    conflicts = gw.gateway.metrics.registry.get_sample_value(
        "shellgate_store_cas_attempts_total", {"object_type": "provider", "result": "conflict"}
    )
    assert not conflicts
