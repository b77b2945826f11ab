"""TLS and mutual TLS on a real ``shellgate serve`` process, with the official SDK, and
certificate files rotated under the running process."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.auth.sdk import sdk_codes
from tests.support.pki import Issued, TestCA, served_certificate_subject
from tests.support.processes import GatewayProcess, gateways

pytestmark = pytest.mark.slow


def replace_file(source: Path, target: Path) -> None:
    """Swap the content in one rename, as a Secret volume update or cert-manager does."""
    staged = target.with_suffix(target.suffix + ".new")
    staged.write_bytes(source.read_bytes())
    os.replace(staged, target)


async def served_subject(port: int, ca: Path, client: Issued | None = None) -> str:
    return await asyncio.to_thread(served_certificate_subject, port, ca, client)


async def wait_for_subject(port: int, ca: Path, expected: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (subject := await served_subject(port, ca)) != expected:
        assert time.monotonic() < deadline, f"still serving {subject}"
        await asyncio.sleep(0.1)


async def test_tls_serves_the_sdk_and_picks_up_rotated_certificates(
    tmp_path: Path, ca: TestCA
) -> None:
    first = ca.server("gateway-one", stem="tls")
    gateway = GatewayProcess(
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        tmp_path / "state",
        extra_args=["--tls-cert", str(first.cert), "--tls-key", str(first.key)],
    )
    async with gateways([gateway]):
        port = gateway.grpc_port
        assert await sdk_codes(gateway.address, [{"ca": ca.cert}, {}]) == ["OK", "UNAVAILABLE"]
        assert await served_subject(port, ca.cert) == first.subject

        # Renewal under a new CA: half-written (certificate without its key) changes nothing.
        new_ca = TestCA(tmp_path / "pki2", name="renewed CA")
        second = new_ca.server("gateway-two", stem="renewed")
        replace_file(second.cert, first.cert)
        assert await served_subject(port, ca.cert) == first.subject
        assert "do not load" in gateway.log_text()

        replace_file(second.key, first.key)  # now complete: new connections get it
        await wait_for_subject(port, new_ca.cert, second.subject)
        codes = await sdk_codes(gateway.address, [{"ca": new_ca.cert}, {"ca": ca.cert}])
        assert codes == ["OK", "UNAVAILABLE"]
    assert "TLS certificate files changed" in gateway.log_text()


async def test_mtls_admits_only_clients_with_a_certificate_from_the_client_ca(
    tmp_path: Path, ca: TestCA
) -> None:
    server = ca.server()
    alice = ca.client("alice")
    impostor = TestCA(tmp_path / "other", name="another CA").client("alice")
    gateway = GatewayProcess(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "state")
    gateway.extra_args = [
        # Not loopback: allowed because mTLS authentication is configured.
        "--listen", f"0.0.0.0:{gateway.grpc_port}",
        "--tls-cert", str(server.cert),
        "--tls-key", str(server.key),
        "--tls-client-ca", str(ca.cert),
        "--enable-mtls-auth",
    ]  # fmt: skip
    async with gateways([gateway]):
        codes = await sdk_codes(
            gateway.address,
            [
                {"ca": ca.cert, "cert": alice.cert, "key": alice.key},
                {"ca": ca.cert},
                {"ca": ca.cert, "cert": impostor.cert, "key": impostor.key},
                {},
            ],
        )
    assert codes == ["OK", "UNAVAILABLE", "UNAVAILABLE", "UNAVAILABLE"]
    assert "authentication: mtls" in gateway.log_text()
