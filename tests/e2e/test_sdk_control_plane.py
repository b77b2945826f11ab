"""`shellgate serve` as a process, on SQLite and Postgres, driven by the official SDK's
clients through the control-plane RPCs of issue 14 (the SDK runs in a subprocess)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from shellgate.api import openshell_pb2, openshell_pb2_grpc, sandbox_pb2
from tests.support.processes import GatewayProcess, gateways

SCRIPT = Path(__file__).parents[1] / "support" / "sdk_control_plane.py"

pytestmark = pytest.mark.slow


async def run_sdk(address: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 180)
    lines = out.decode().splitlines()
    assert process.returncode == 0, f"SDK run failed after {lines}:\n{err.decode()}"
    assert lines[-1] == "done"
    steps = {}
    for line in lines[:-1]:
        _, name, value = line.split(" ", 2)
        steps[name] = json.loads(value)
    return steps


async def seed_global_setting(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = openshell_pb2_grpc.OpenShellStub(channel)
        request = openshell_pb2.UpdateConfigRequest(setting_key="dummy_int", **{"global": True})
        request.setting_value.CopyFrom(sandbox_pb2.SettingValue(int_value=5))
        await stub.UpdateConfig(request)


async def test_sdk_clients_drive_the_control_plane(store_url: str, tmp_path: Path) -> None:
    gateway = GatewayProcess(store_url, tmp_path / "state")
    async with gateways([gateway]):
        await seed_global_setting(gateway.address)
        steps = await run_sdk(gateway.address)
    assert steps["gateway-config"]["revision"] == 1
    assert steps["gateway-config"]["dummy_int"] == 5
    assert "dummy_bool" in steps["gateway-config"]["keys"]
    assert steps["template-created"] == {"name": "base", "rv": 1}
    assert steps["template-duplicate"].startswith("ALREADY_EXISTS")
    assert steps["template-got"] == {"image": "ghcr.io/example/base:1", "cpu": "2"}
    assert steps["template-listed"] == ["base"]
    assert steps["sandbox-from-template"] == {
        "image": "ghcr.io/example/base:1",
        "env": {"A": "1"},
        "template": "base",
        "template_rv": "1",
    }
    assert steps["template-in-use"] == (
        "FAILED_PRECONDITION: sandbox template 'base' is in use by sandboxes: fromtpl"
    )
    assert steps["template-deleted"] == "COMPLETED"
    assert steps["template-absent"] == "ALREADY_ABSENT"
    assert steps["service-exposed"] == {"key": "svc--web", "rv": [1, 2], "port": 9090}
    assert steps["service-read"] == {"port": 9090, "listed": 1}
    assert steps["service-invalid"] == "INVALID_ARGUMENT: name must not contain '--'"
    assert steps["service-after-sandbox-delete"] == 0
    assert steps["profiles"] == {
        "lint": True,
        "imported": True,
        "listed": ["github", "nvidia", "pypi", "acme"],
    }
    assert steps["profile-updated"] == {"rv": 2, "desc": "v2"}
    assert steps["profile-in-use"] == (
        "FAILED_PRECONDITION: provider profile 'acme' is in use by providers: acme-one"
    )
    assert steps["profile-deleted"] == openshell_pb2.DELETION_OUTCOME_COMPLETED
    assert steps["credentials"] == {"GITHUB_TOKEN": "tok-123"}
    assert steps["refresh"] == {
        "configured": "configured",
        "rotated": "rotation_requested",
        "listed": ["GITHUB_TOKEN"],
        "deleted": openshell_pb2.DELETION_OUTCOME_COMPLETED,
    }
    assert steps["provider-status"] == {
        "state": openshell_pb2.PROVIDER_READINESS_STATE_PERSISTED,
        "provider": "creds",
    }
    assert "provider credentials read: provider=creds" in gateway.log_text()
    assert "tok-123" not in gateway.log_text()
