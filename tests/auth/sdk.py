"""Drive a gateway with the official SDK in a subprocess (see sdk_auth_probe.py)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

PROBE = Path(__file__).parents[1] / "support" / "sdk_auth_probe.py"


async def sdk_codes(endpoint: str, attempts: list[dict[str, object]]) -> list[str]:
    """The status code name ("OK", "UNAUTHENTICATED", ...) the SDK got for each attempt."""
    wire = [{k: str(v) for k, v in spec.items()} for spec in attempts]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROBE),
        json.dumps({"endpoint": endpoint, "attempts": wire}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0, err.decode()[-3000:]
    codes: list[str] = json.loads(out.decode().strip().splitlines()[-1])
    return codes
