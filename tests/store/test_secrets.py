"""Provider credentials are sealed at rest (AES-256-GCM data keys under a key-encryption key)
and open only where they were sealed; a rotation re-seals by CAS."""

from __future__ import annotations

import asyncio
import base64
import os
import secrets as random_bytes
import stat
from pathlib import Path

import pytest

from shellgate.api import datamodel_pb2
from shellgate.controller.app.rotate import reseal_all
from shellgate.reconcilers.provider import merge_provider_update
from shellgate.store import ConfigurationError, Repositories, Store
from shellgate.store.secrets import KEY_BYTES, Keyring, SecretError, SecretSealer, is_sealed

PLANTED = "sk-planted-" + "7" * 24


def sealer(*keys: bytes) -> SecretSealer:
    return SecretSealer(Keyring(list(keys) or [random_bytes.token_bytes(KEY_BYTES)]))


def provider(name: str = "gh", **credentials: str) -> datamodel_pb2.Provider:
    message = datamodel_pb2.Provider(type="github", credentials=credentials or {"TOKEN": PLANTED})
    message.metadata.id, message.metadata.name = f"id-{name}", name
    return message


def test_a_sealed_value_opens_only_where_it_was_sealed() -> None:
    s = sealer()
    values = {"TOKEN": PLANTED, "OTHER": "x"}
    s.seal_map(values, "row-1")
    assert all(is_sealed(v) and PLANTED not in v for v in values.values())
    assert s.open(values["TOKEN"], "row-1", "TOKEN") == PLANTED
    with pytest.raises(SecretError):
        s.open(values["TOKEN"], "row-2", "TOKEN")  # copied to another provider
    with pytest.raises(SecretError):
        s.open(values["TOKEN"], "row-1", "OTHER")  # moved to another key
    tampered = values["TOKEN"][:-4] + ("AAAA" if not values["TOKEN"].endswith("AAAA") else "BBBB")
    with pytest.raises(SecretError):
        s.open(tampered, "row-1", "TOKEN")
    with pytest.raises(SecretError):
        sealer().open(values["TOKEN"], "row-1", "TOKEN")  # another key: unknown kid


def test_every_seal_is_fresh_and_plain_values_open_as_themselves() -> None:
    s = sealer()
    first, second = {"T": "same"}, {"T": "same"}
    s.seal_map(first, "r")
    s.seal_map(second, "r")
    assert first["T"] != second["T"]
    assert s.open("written-before-sealing", "r", "T") == "written-before-sealing"


def test_key_files(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "encryption.key"
    created = Keyring.create_file(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Keyring.from_file(path).active.kid == created.active.kid
    with pytest.raises(ConfigurationError):
        Keyring.create_file(path)  # never overwrites a key
    bad = tmp_path / "bad.key"
    bad.write_text(base64.b64encode(b"short").decode())
    with pytest.raises(ConfigurationError, match="32 bytes"):
        Keyring.from_file(bad)
    assert "key=" not in repr(created.active) and created.active.kid in repr(created.active)


async def test_the_database_never_holds_a_credential_in_the_clear(store: Store) -> None:
    repos = Repositories(store, sealer())
    created = await repos.providers.create(provider())
    record = await store.get("provider", created.metadata.id)
    assert record is not None
    assert PLANTED.encode() not in record.payload
    stored = datamodel_pb2.Provider.FromString(record.payload)
    assert is_sealed(stored.credentials["TOKEN"])


async def test_an_update_that_keeps_the_credentials_keeps_their_ciphertext(store: Store) -> None:
    repos = Repositories(store, sealer())
    created = await repos.providers.create(provider())
    same = provider()
    same.ClearField("credentials")  # an update naming no credential keeps them
    outcome = await repos.providers.update(
        created.metadata.id, lambda stored: merge_provider_update(stored, same)
    )
    assert not outcome.written
    assert outcome.message.credentials["TOKEN"] == created.credentials["TOKEN"]
    changed = provider(TOKEN="sk-new")
    outcome = await repos.providers.update(
        created.metadata.id, lambda stored: merge_provider_update(stored, changed)
    )
    assert outcome.written
    value = outcome.message.credentials["TOKEN"]
    assert is_sealed(value) and repos.providers.sealer.open(value, "id-gh", "TOKEN") == "sk-new"


async def test_rotation_reseals_every_row_once_and_can_run_again(store: Store) -> None:
    old, new = random_bytes.token_bytes(KEY_BYTES), random_bytes.token_bytes(KEY_BYTES)
    before = Repositories(store, sealer(old))
    for name in ("a", "b", "c"):
        await before.providers.create(provider(name))
    rotating = Repositories(store, SecretSealer(Keyring([old]).with_active(new)))
    assert await reseal_all(rotating) == (3, 3)
    assert await reseal_all(rotating) == (3, 0)  # resumable: nothing left to do
    only_new = SecretSealer(Keyring([new]))
    for name in ("a", "b", "c"):
        found = await rotating.providers.find(name, "default")
        assert found is not None
        assert only_new.open(found.credentials["TOKEN"], f"id-{name}", "TOKEN") == PLANTED


async def test_the_rotate_key_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shellgate.controller.app.cli import main
    from shellgate.store import connect

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    old_file, new_file = tmp_path / "old.key", tmp_path / "new.key"
    old, new = Keyring.create_file(old_file), Keyring.create_file(new_file)
    store = await connect(url)
    try:
        await Repositories(store, SecretSealer(old)).providers.create(provider())
    finally:
        await store.close()
    args = ["rotate-key", "--database-url", url, "--encryption-key-file", str(old_file)]
    code = await asyncio.to_thread(main, [*args, "--new-key-file", str(new_file)])
    assert code == 0
    assert f"re-sealed 1 of 1 providers under key {new.active.kid}" in capsys.readouterr().out
    store = await connect(url)
    try:
        found = await Repositories(store, SecretSealer(new)).providers.find("gh", "default")
    finally:
        await store.close()
    assert found is not None
    assert SecretSealer(new).open(found.credentials["TOKEN"], "id-gh", "TOKEN") == PLANTED


async def test_rotation_racing_updates_loses_no_acknowledged_credential(store: Store) -> None:
    """rotate-key runs while a replica updates credentials: each re-seal and each update is a
    CAS on the same row (the guard the store race tests remove), so the last acknowledged
    value survives, sealed under the new key."""
    old, new = random_bytes.token_bytes(KEY_BYTES), random_bytes.token_bytes(KEY_BYTES)
    writer = Repositories(store, SecretSealer(Keyring([old, new])))  # seals with old
    names = [f"p{n}" for n in range(6)]
    for name in names:
        await writer.providers.create(provider(name))
    rotating = Repositories(store, SecretSealer(Keyring([old]).with_active(new)))
    last: dict[str, str] = {}

    async def update_all(round_: int) -> None:
        for name in names:
            value = f"sk-{name}-{round_}"
            change = provider(name, TOKEN=value)
            found = await writer.providers.find(name, "default")
            assert found is not None
            await writer.providers.update(
                found.metadata.id, lambda stored, c=change: merge_provider_update(stored, c)
            )
            last[name] = value

    async def rotate_repeatedly() -> None:
        for _ in range(3):
            await reseal_all(rotating)

    async def update_rounds() -> None:
        for round_ in range(1, 4):  # one writer: its acknowledgements are ordered
            await update_all(round_)

    await asyncio.gather(update_rounds(), rotate_repeatedly())
    await reseal_all(rotating)  # the operator runs it once more after the writers moved on
    only_new = SecretSealer(Keyring([new]))
    for name in names:
        found = await rotating.providers.find(name, "default")
        assert found is not None
        assert only_new.open(found.credentials["TOKEN"], f"id-{name}", "TOKEN") == last[name]


async def test_a_row_written_before_sealing_is_sealed_by_its_next_update(store: Store) -> None:
    from shellgate.store import WriteCondition

    plain = provider()
    await store.put_if(
        "provider", "id-gh", "gh", plain.SerializeToString(), {}, WriteCondition.MUST_CREATE
    )
    repos = Repositories(store, sealer())
    config_only = provider()
    config_only.ClearField("credentials")
    config_only.config["region"] = "eu"
    outcome = await repos.providers.update(
        "id-gh", lambda stored: merge_provider_update(stored, config_only)
    )
    assert outcome.written and is_sealed(outcome.message.credentials["TOKEN"])
    record = await store.get("provider", "id-gh")
    assert record is not None and PLANTED.encode() not in record.payload


async def test_rotation_goes_on_past_a_row_it_cannot_open(store: Store) -> None:
    from shellgate.controller.app.rotate import UnopenedRows

    lost_key = Repositories(store, sealer())
    await lost_key.providers.create(provider("orphan"))
    kept = random_bytes.token_bytes(KEY_BYTES)
    await Repositories(store, sealer(kept)).providers.create(provider("fine"))
    new = random_bytes.token_bytes(KEY_BYTES)
    rotating = Repositories(store, SecretSealer(Keyring([kept]).with_active(new)))
    with pytest.raises(UnopenedRows, match="orphan"):
        await reseal_all(rotating)
    fine = await rotating.providers.find("fine", "default")
    assert fine is not None
    assert SecretSealer(Keyring([new])).open(fine.credentials["TOKEN"], "id-fine", "TOKEN")
