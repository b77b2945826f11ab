"""The RPC table of docs/security.md, read as data: RPC name → (role, scope)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SECURITY_DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
ROW = re.compile(r"^\| `(?P<rpc>\w+)` \| (?P<role>[^|]+?) \| (?P<scope>[^|]+?) \|")


@dataclass(frozen=True)
class Documented:
    role: str  # public, authenticated, workspace user|admin, platform admin[ (supervisor)]
    scope: str  # "" when none


def documented_rpcs() -> dict[str, Documented]:
    text = SECURITY_DOC.read_text()
    section = text.split("## RPC table", 1)[1].split("\n## ", 1)[0]
    table: dict[str, Documented] = {}
    for line in section.splitlines():
        match = ROW.match(line)
        if match is None:
            continue
        rpc = match["rpc"]
        assert rpc not in table, f"{rpc} is listed twice"
        scope = match["scope"].strip().strip("`")
        table[rpc] = Documented(match["role"].strip(), "" if scope == "—" else scope)
    return table
