"""A throwaway PostgreSQL server for one benchmark run, or the one the environment names.

``initdb`` + ``pg_ctl`` in a fresh temporary directory, on a free port, listening on
127.0.0.1 only. PostgreSQL refuses to run as root, so as root the server runs as the
``postgres`` user (``runuser``), the way tests/support/pg_ctl_as_postgres does it for the
test suite; the benchmark itself keeps running as the calling user.

Durability is left at the PostgreSQL defaults (fsync, synchronous_commit and
full_page_writes on): the benchmark measures what a production deployment would see.
``SHELLGATE_BENCH_DATABASE_URL`` skips all of this and uses that database instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

ENV_URL = "SHELLGATE_BENCH_DATABASE_URL"
SERVER_USER = "postgres"
START_TIMEOUT_S = 30


@contextlib.contextmanager
def postgres_url() -> Iterator[str]:
    """The DSN to benchmark: ``$SHELLGATE_BENCH_DATABASE_URL``, or a throwaway server's."""
    configured = os.environ.get(ENV_URL)
    if configured:
        yield configured
        return
    with throwaway_server() as url:
        yield url


@contextlib.contextmanager
def throwaway_server() -> Iterator[str]:
    """Start a private server in a temporary directory; stop it and delete it on exit."""
    base = Path(tempfile.mkdtemp(prefix="shellgate-bench-pg-"))
    try:
        _hand_over(base)
        data = base / "data"
        _run_server_tool(
            "initdb", "-D", str(data), "-U", SERVER_USER, "-A", "trust", "-E", "UTF8", "--no-locale"
        )
        port = free_port()
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1"
        _run_server_tool(
            "pg_ctl",
            "-D",
            str(data),
            "-l",
            str(base / "server.log"),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "-o",
            options,
            "start",
        )
        try:
            yield f"postgresql://{SERVER_USER}@127.0.0.1:{port}/postgres"
        finally:
            _run_server_tool("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _hand_over(base: Path) -> None:
    """As root, let the server user own ``base`` and reach it through its ancestors."""
    if not _running_as_root():
        return
    shutil.chown(base, user=SERVER_USER, group=SERVER_USER)
    for ancestor in base.parents:
        mode = ancestor.stat().st_mode
        if not mode & 0o001:
            ancestor.chmod(mode | 0o001)


def _bindir() -> Path:
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], check=True, capture_output=True, text=True)
        return Path(out.stdout.strip())
    initdb = shutil.which("initdb")
    if initdb is None:
        raise RuntimeError("PostgreSQL server binaries not found (no pg_config, no initdb)")
    return Path(initdb).parent


def _run_server_tool(tool: str, *args: str) -> None:
    """Run ``initdb``/``pg_ctl`` (as the server user when we are root); raise with its output."""
    command = [str(_bindir() / tool), *args]
    if _running_as_root():
        command = ["runuser", "-u", SERVER_USER, "--", *command]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")
