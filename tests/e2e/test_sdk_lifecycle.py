"""`shellgate serve` as a process, driven end to end by the official SDK (in a subprocess)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from tests.support.processes import GatewayProcess, gateways, http_get

SCRIPT = Path(__file__).parents[1] / "support" / "sdk_lifecycle.py"

pytestmark = pytest.mark.slow


async def run_sdk(address: str) -> list[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        address,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    lines = out.decode().splitlines()
    assert process.returncode == 0, f"SDK run failed after {lines}:\n{err.decode()}"
    return lines


async def test_sdk_drives_a_sandbox_through_its_life(store_url: str, tmp_path: Path) -> None:
    gateway = GatewayProcess(store_url, tmp_path / "state")
    async with gateways([gateway]):
        lines = await run_sdk(gateway.address)
        status, metrics = await asyncio.to_thread(http_get, f"{gateway.http}/metrics")
    assert lines[0] == "health 1"
    assert "stop answered 6" in lines  # SANDBOX_PHASE_STOPPING
    assert "start answered 8" in lines  # SANDBOX_PHASE_STARTING
    assert lines[-1] == "deleted"
    assert status == 200
    assert 'shellgate_grpc_requests_total{code="OK",method="CreateSandbox"} 2.0' in metrics


async def test_sigterm_stops_within_ten_seconds(tmp_path: Path) -> None:
    gateway = GatewayProcess(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "state")
    async with gateways([gateway]):
        pass
    assert gateway.process is not None and gateway.process.returncode == 0
    assert "stopped" in gateway.log_text()
