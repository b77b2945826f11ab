"""Facts about the machine a run happened on, and the code it ran, for the document's header.

The code state matters because the tree is shared: the benchmark records the commit, the
uncommitted files under ``shellgate/`` and a digest of its sources when it starts, and
names the source files that changed by the end (every process imported the code at the
start, so the figures are for the starting state).
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import importlib.metadata
import os
import platform
import sqlite3
import subprocess
import tempfile
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
PACKAGE = "shellgate"
PACKAGES = ("asyncpg", "protobuf", "sqlalchemy", "aiosqlite", "aetcd", "grpcio")


@dataclasses.dataclass(frozen=True, slots=True)
class CodeState:
    commit: str
    modified: tuple[str, ...]  # uncommitted paths under shellgate/
    files: dict[str, str]  # digest of every .py and .sql file under shellgate/, by path

    @property
    def digest(self) -> str:
        return hashlib.sha256(repr(sorted(self.files.items())).encode()).hexdigest()[:12]


def code_state() -> CodeState:
    status = _git("status", "--porcelain", "--", PACKAGE)
    modified = tuple(sorted(line[3:] for line in status.splitlines() if line.strip()))
    return CodeState(_git("rev-parse", "--short", "HEAD") or "unknown", modified, _sources())


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPOSITORY, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return ""
    return done.stdout.rstrip()


def _sources() -> dict[str, str]:
    return {
        str(path.relative_to(REPOSITORY)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((REPOSITORY / PACKAGE).rglob("*"))
        if path.suffix in (".py", ".sql") and path.is_file()
    }


def changed_since(before: dict[str, str], after: dict[str, str]) -> tuple[str, ...]:
    """Paths added, removed or modified between two snapshots."""
    return tuple(sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p)))


@dataclasses.dataclass(frozen=True, slots=True)
class MachineFacts:
    date: str
    cores: int
    cpu: str
    kernel: str
    python: str
    sqlite_library: str
    packages: dict[str, str]
    temp_dir: str
    temp_filesystem: str
    load_at_start: str
    code: CodeState
    load_at_end: str = ""
    changed_during_run: tuple[str, ...] = ()


def collect() -> MachineFacts:
    temp_dir = tempfile.gettempdir()
    return MachineFacts(
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        cores=os.cpu_count() or 0,
        cpu=_cpu_model(),
        kernel=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        sqlite_library=sqlite3.sqlite_version,
        packages={name: _version(name) for name in PACKAGES},
        temp_dir=temp_dir,
        temp_filesystem=_filesystem_of(temp_dir),
        load_at_start=load_average(),
        code=code_state(),
    )


def finished(facts: MachineFacts) -> MachineFacts:
    """``facts`` with the end-of-run load average, and whether the code changed meanwhile."""
    return dataclasses.replace(
        facts,
        load_at_end=load_average(),
        changed_during_run=changed_since(facts.code.files, _sources()),
    )


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine shows up here."""
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _filesystem_of(path: str) -> str:
    """``<type> on <device>`` for the mount holding ``path`` (Linux), else "unknown"."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    real = os.path.realpath(path)
    best: list[str] | None = None
    for mount in mounts:
        point = mount[1]
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best[1])):
            best = mount
    return "unknown" if best is None else f"{best[2]} on {best[0]}"
