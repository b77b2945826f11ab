"""Every error path carries google.rpc details that the official SDK's GatewayError decodes.

The SDK runs in a subprocess: its generated modules and ours define the same protobuf
symbols and cannot be loaded into one process.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from shellgate.api import datamodel_pb2, openshell_pb2
from tests.gateway.conftest import Running

PROBE = Path(__file__).parents[1] / "support" / "sdk_probe.py"


async def sdk(gw: Running, scenario: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROBE),
        gw.address,
        scenario,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    return json.loads(out)  # type: ignore[no-any-return]


@pytest.fixture
async def seeded(gw: Running) -> Running:
    await gw.stub.CreateSandbox(
        openshell_pb2.CreateSandboxRequest(name="taken", spec=openshell_pb2.SandboxSpec())
    )
    provider = datamodel_pb2.Provider(type="github", credentials={"T": "x"})
    provider.metadata.name = "gh"
    await gw.stub.CreateProvider(openshell_pb2.CreateProviderRequest(provider=provider))
    return gw


async def test_not_found(seeded: Running) -> None:
    result = await sdk(seeded, "not_found")
    assert result["code"] == "NOT_FOUND" and result["has_status"]


async def test_already_exists(seeded: Running) -> None:
    assert (await sdk(seeded, "already_exists"))["code"] == "ALREADY_EXISTS"


async def test_invalid_argument_has_field_violations(seeded: Running) -> None:
    result = await sdk(seeded, "invalid_argument")
    assert result["code"] == "INVALID_ARGUMENT"
    assert result["violations"] and result["violations"][0][0] == "metadata.name"


async def test_bad_selector_names_the_field(seeded: Running) -> None:
    result = await sdk(seeded, "bad_selector")
    assert result["code"] == "INVALID_ARGUMENT"
    assert [v[0] for v in result["violations"]] == ["label_selector"]


async def test_failed_precondition(seeded: Running) -> None:
    result = await sdk(seeded, "failed_precondition")
    assert result["code"] == "FAILED_PRECONDITION" and result["has_status"]


async def test_aborted_carries_conflict_info_and_retry(seeded: Running) -> None:
    result = await sdk(seeded, "aborted")
    assert result["code"] == "ABORTED"
    assert result["reason"] == "RESOURCE_VERSION_CONFLICT"
    current = await seeded.gateway.store.get_by_name("sandbox", "taken")
    assert current is not None
    assert result["metadata"] == {"current_resource_version": str(current.resource_version)}
    assert result["retry_delay"] is not None and result["retry_delay"] > 0


async def test_unavailable_when_the_store_is_gone(seeded: Running) -> None:
    await seeded.gateway.store.close()
    result = await sdk(seeded, "unavailable")
    assert result["code"] == "UNAVAILABLE"
    assert result["retry_delay"] is not None
