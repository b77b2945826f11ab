"""A credential sent to a real gateway is nowhere in the clear afterwards: not in the SQLite
file or its WAL, not in a Postgres dump, not in the logs or /metrics; answers say REDACTED."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import grpc
import pytest

from shellgate.api import datamodel_pb2, openshell_pb2, openshell_pb2_grpc
from shellgate.controller.app.cli import main
from tests.support.processes import GatewayProcess, gateways, http_get

P = openshell_pb2
PLANTED = "sk-planted-" + "9" * 28

pytestmark = pytest.mark.slow


async def plant_and_read_back(gateway: GatewayProcess) -> None:
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        stub = openshell_pb2_grpc.OpenShellStub(channel)
        request = datamodel_pb2.Provider(type="github", credentials={"TOKEN": PLANTED})
        request.metadata.name = "gh"
        created = await stub.CreateProvider(P.CreateProviderRequest(provider=request))
        listed = await stub.ListProviders(P.ListProvidersRequest())
        got = await stub.GetProvider(P.GetProviderRequest(name="gh"))
    for answer in (created.provider, listed.providers[0], got.provider):
        assert dict(answer.credentials) == {"TOKEN": "REDACTED"}


def files_holding(directory: Path, needle: bytes) -> list[str]:
    return [str(f) for f in directory.rglob("*") if f.is_file() and needle in f.read_bytes()]


async def test_sqlite_files_logs_and_metrics_hold_no_credential(tmp_path: Path) -> None:
    database = tmp_path / "db" / "shellgate.db"
    none_given = ["--encryption-key-file", ""]  # SQLite then generates one by its file
    gateway = GatewayProcess(f"sqlite:///{database}", tmp_path / "state", extra_args=none_given)
    async with gateways([gateway]):
        await plant_and_read_back(gateway)
        _, metrics = await asyncio.to_thread(http_get, f"{gateway.http}/metrics")
        assert PLANTED not in metrics
        assert files_holding(tmp_path / "db", PLANTED.encode()) == []  # file and WAL, live
    assert (tmp_path / "db" / "encryption.key").exists()  # beside the database file
    assert "generated" in gateway.log_text()
    assert PLANTED not in gateway.log_text()
    assert files_holding(tmp_path, PLANTED.encode()) == []


async def test_a_postgres_dump_holds_no_credential(pg_dsn: str, tmp_path: Path) -> None:
    gateway = GatewayProcess(pg_dsn, tmp_path / "state")
    async with gateways([gateway]):
        await plant_and_read_back(gateway)
    dump = await asyncio.to_thread(
        subprocess.run, ["pg_dump", "--data-only", pg_dsn], capture_output=True, check=True
    )
    assert b"provider" in dump.stdout  # the dump did include the row
    assert PLANTED.encode() not in dump.stdout
    assert PLANTED not in gateway.log_text()


def test_postgres_without_a_key_file_refuses_to_start(
    pg_dsn: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SHELLGATE_ENCRYPTION_KEY_FILE", raising=False)
    code = main(["serve", "--database-url", pg_dsn, "--listen", "127.0.0.1:0"])
    assert code == 2
    assert "--encryption-key-file" in capsys.readouterr().err
