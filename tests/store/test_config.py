"""Connecting by URL, and the SQLite file's permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from shellgate.store import ConfigurationError, WriteCondition, connect, store_for_url
from shellgate.store.postgres import PostgresStore
from shellgate.store.sqlite import SqliteStore


@pytest.mark.parametrize(
    "url",
    ["mysql://x/y", "sqlite://relative.db", "sqlite:", "file:///tmp/x.db", "", "sqlite:///x?foo=1"],
)
def test_unsupported_urls_name_the_accepted_forms(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        store_for_url(url)
    assert "sqlite:///" in str(caught.value) or "unknown SQLite URL options" in str(caught.value)


def test_url_forms_pick_the_backend(tmp_path: Path) -> None:
    assert isinstance(store_for_url("postgresql://u@h/db"), PostgresStore)
    assert isinstance(store_for_url("postgres://u@h/db"), PostgresStore)
    memory = store_for_url("sqlite:///:memory:")
    assert isinstance(memory, SqliteStore) and memory.in_memory
    relative = store_for_url("sqlite:///./state/x.db")
    assert isinstance(relative, SqliteStore) and relative.path == "./state/x.db"
    absolute = store_for_url(f"sqlite:///{tmp_path}/x.db")
    assert isinstance(absolute, SqliteStore) and absolute.path == f"{tmp_path}/x.db"


def test_bad_synchronous_mode_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="synchronous"):
        store_for_url("sqlite:///:memory:?synchronous=sometimes")


async def test_sqlite_file_and_sidecars_are_private(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "shellgate.db"
    store = await connect(f"sqlite:///{path}")
    try:
        await store.put_if("sandbox", "a", "a", b"", {}, WriteCondition.MUST_CREATE)
        assert os.path.exists(f"{path}-wal"), "WAL mode keeps a -wal sidecar while open"
        for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if candidate.exists():
                assert stat.S_IMODE(os.stat(candidate).st_mode) == 0o600, candidate
    finally:
        await store.close()


async def test_sqlite_permissions_are_tightened_on_reconnect(tmp_path: Path) -> None:
    path = tmp_path / "shellgate.db"
    store = await connect(f"sqlite:///{path}")
    await store.close()
    os.chmod(path, 0o644)
    store = await connect(f"sqlite:///{path}")
    await store.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


async def test_memory_store_works() -> None:
    store = await connect("sqlite:///:memory:")
    try:
        await store.ping()
        assert not store.supports_multiple_replicas
    finally:
        await store.close()
