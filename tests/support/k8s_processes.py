"""A kmock API server process and an HTTP client for it, for end-to-end Kubernetes tests.

``KmockProcess`` runs tests/support/kmock_server.py, waits for its ready file (never a fixed
sleep) and hands out a kubeconfig that ``shellgate serve --driver kubernetes`` reads through
``KUBECONFIG``. ``ClusterClient`` lets the test play the agent-sandbox controller against
it: read objects, patch status. ``scrape`` reads a replica's Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.k8s_emulator import collection_url, object_url

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class KmockProcess:
    workdir: Path
    versions: tuple[str, ...] = ("v1beta1",)
    pod_root: Path | None = None
    """When set, every pod answers exec and logs, running commands in this directory."""
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    ready_file: Path = field(init=False)
    kubeconfig: Path = field(init=False)

    def __post_init__(self) -> None:
        self.ready_file = self.workdir / "kmock.port"
        self.kubeconfig = self.workdir / "kubeconfig"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "tests.support.kmock_server"]
        args += ["--ready-file", str(self.ready_file), "--kubeconfig", str(self.kubeconfig)]
        for version in self.versions:
            args += ["--version", version]
        if self.pod_root is not None:
            args += ["--pod-root", str(self.pod_root)]
        log = open(self.workdir / "kmock.log", "wb")  # noqa: SIM115
        self.process = subprocess.Popen(args, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)

    async def wait_ready(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.workdir / "kmock.log").read_text(errors="replace")
                raise AssertionError(f"kmock exited:\n{log}")
            if time.monotonic() > deadline:
                raise AssertionError(f"kmock not ready in {timeout} s")
            await asyncio.sleep(0.05)
        self.port = int(self.ready_file.read_text())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class ClusterClient:
    """The test's own view of the emulated cluster, over HTTP."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._session = aiohttp.ClientSession()

    async def close(self) -> None:
        await self._session.close()

    async def get(self, name: str) -> dict[str, Any] | None:
        async with self._session.get(self._url + object_url(name)) as response:
            if response.status == 404:
                return None
            response.raise_for_status()
            body: dict[str, Any] = await response.json()
            return body

    async def names(self) -> set[str]:
        async with self._session.get(self._url + collection_url()) as response:
            response.raise_for_status()
            listed = await response.json()
        return {item["metadata"]["name"] for item in listed.get("items") or ()}

    async def patch(self, name: str, patch: dict[str, Any]) -> None:
        async with self._session.patch(self._url + object_url(name), json=patch) as response:
            response.raise_for_status()


async def scrape(http_base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a replica's /metrics, keyed by (name, sorted labels)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{http_base}/metrics") as response,
    ):
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))
