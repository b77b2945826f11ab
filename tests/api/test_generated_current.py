"""The committed generated modules of shellgate/api are what its .proto files generate.

Regenerates with tools/gen_api.py (the same protoc command `make proto` runs)
into a temporary directory and compares byte for byte, so a .proto edit without
`make proto` fails here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
API_DIR = ROOT / "shellgate" / "api"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generated(directory: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.iterdir())
        if p.name.endswith(GENERATED_SUFFIXES)
    }


def test_generated_files_are_current(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "gen_api.py"), "--out-dir", str(tmp_path)],
        cwd=ROOT,
        check=True,
    )
    fresh = _generated(tmp_path / "shellgate" / "api")
    committed = _generated(API_DIR)
    protos = sorted(p.stem for p in API_DIR.glob("*.proto"))
    assert protos, "no .proto files in shellgate/api"
    assert sorted(fresh) == sorted(
        f"{stem}{suffix}" for stem in protos for suffix in GENERATED_SUFFIXES
    )

    hint = "run `make proto` and commit the result"
    assert sorted(committed) == sorted(fresh), hint
    stale = [name for name in fresh if committed[name] != fresh[name]]
    assert stale == [], hint
