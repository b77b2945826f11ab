"""A throwaway single-member etcd for the benchmark's peer, when an etcd binary is at hand.

The binary is looked up in order: ``$SHELLGATE_BENCH_ETCD``, ``etcd`` on PATH, then
``.cache/etcd/usr/bin/etcd`` in the repository (where ``make bench`` unpacks the Debian
``etcd-server`` package with ``apt-get download`` and ``dpkg -x``, no root needed). Data
lives in a fresh temporary directory (the same filesystem as the other databases), with
etcd's default durability (an fsync of its WAL per commit).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.postgres_server import free_port

ENV_BINARY = "SHELLGATE_BENCH_ETCD"
CACHED_BINARY = Path(__file__).resolve().parent.parent / ".cache" / "etcd" / "usr" / "bin" / "etcd"
INSTALL_HINT = (
    "`make bench` unpacks it into .cache/etcd (apt-get download etcd-server && "
    "dpkg -x etcd-server_*.deb .cache/etcd), or `apt-get install etcd-server`, or set "
    f"{ENV_BINARY} to an etcd binary"
)
START_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class EtcdServer:
    host: str
    port: int
    version: str


def etcd_binary() -> Path | None:
    configured = os.environ.get(ENV_BINARY)
    if configured:
        return Path(configured)
    found = shutil.which("etcd")
    if found:
        return Path(found)
    return CACHED_BINARY if CACHED_BINARY.is_file() else None


@contextlib.contextmanager
def etcd_server() -> Iterator[EtcdServer | None]:
    """A running etcd, or None when no binary is installed (the peer is then skipped)."""
    binary = etcd_binary()
    if binary is None:
        yield None
        return
    base = Path(tempfile.mkdtemp(prefix="shellgate-bench-etcd-"))
    client, peer = free_port(), free_port()
    command = [
        str(binary),
        "--name=bench",
        f"--data-dir={base / 'data'}",
        f"--listen-client-urls=http://127.0.0.1:{client}",
        f"--advertise-client-urls=http://127.0.0.1:{client}",
        f"--listen-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
        f"--initial-cluster=bench=http://127.0.0.1:{peer}",
        "--log-level=warn",
    ]
    with (base / "etcd.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            _wait_until_serving(client, process)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its log: {_tail(base / 'etcd.log')}") from None
        yield EtcdServer("127.0.0.1", client, _version(binary))
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        shutil.rmtree(base, ignore_errors=True)


def _wait_until_serving(port: int, process: subprocess.Popen[bytes]) -> None:
    import urllib.request

    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"etcd exited at start with status {process.returncode}")
        url = f"http://127.0.0.1:{port}/health"
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as reply:
            if b'"true"' in reply.read():
                return
        time.sleep(0.1)
    raise RuntimeError(f"etcd did not become healthy within {START_TIMEOUT_S:g} s")


def _tail(log: Path) -> str:
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return " | ".join(lines[-5:]) or "(empty)"


def _version(binary: Path) -> str:
    done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=False)
    first = done.stdout.splitlines()[0] if done.stdout else "unknown"
    return first.removeprefix("etcd Version: ").strip()
