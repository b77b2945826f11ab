"""Real ``shellgate serve`` processes for end-to-end tests.

Each process gets free loopback ports, its own replica id and state directory; readiness is
known by polling ``/readyz``. Stopping sends SIGTERM and checks the process exits in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SHELLGATE = str(Path(sys.executable).with_name("shellgate"))
_SHARED_KEY_FILE: Path | None = None


def shared_key_file() -> Path:
    """One key file for every replica of the test run: replicas on one database must seal
    and open provider credentials with the same key, as in production."""
    global _SHARED_KEY_FILE
    if _SHARED_KEY_FILE is None:
        import tempfile

        from shellgate.store.secrets import Keyring

        path = Path(tempfile.mkdtemp(prefix="shellgate-keys-")) / "encryption.key"
        Keyring.create_file(path)
        _SHARED_KEY_FILE = path
    return _SHARED_KEY_FILE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@dataclass
class GatewayProcess:
    database_url: str
    state_dir: Path
    replica_id: str = "r1"
    driver: str = "local"
    extra_args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    grpc_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.state_dir / f"{self.replica_id}.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                SHELLGATE,
                "serve",
                "--database-url",
                self.database_url,
                "--listen",
                self.address,
                "--http-listen",
                f"127.0.0.1:{self.http_port}",
                "--driver",
                self.driver,
                "--replica-id",
                self.replica_id,
                "--state-dir",
                str(self.state_dir),
                "--encryption-key-file",
                str(shared_key_file()),
                *self.extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
        )

    def log_text(self) -> str:
        path = self.state_dir / f"{self.replica_id}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    async def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"{self.replica_id} exited:\n{self.log_text()}")
            with contextlib.suppress(OSError):
                status, _ = await asyncio.to_thread(http_get, f"{self.http}/readyz")
                if status == 200:
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.replica_id} not ready in {timeout} s:\n{self.log_text()}")

    async def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM; returns the exit code, failing if it takes longer than ``timeout``."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        while self.process.poll() is None:
            if time.monotonic() - started > timeout:
                self.process.kill()
                raise AssertionError(f"{self.replica_id} ignored SIGTERM:\n{self.log_text()}")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@contextlib.asynccontextmanager
async def gateways(processes: Sequence[GatewayProcess]) -> AsyncIterator[Sequence[GatewayProcess]]:
    for process in processes:
        process.start()
    try:
        await asyncio.gather(*(p.wait_ready() for p in processes))
        yield processes
    finally:
        for process in processes:
            with contextlib.suppress(AssertionError):
                await process.stop()
            process.kill()
