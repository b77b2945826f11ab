"""Secure defaults of a real ``shellgate serve`` process, checked with the official SDK.

Without authentication the gateway serves plaintext only on loopback (with a warning), refuses
to start on any other address, and starts there only with ``--allow-unauthenticated``, which
it then reports in ``/readyz``. The option checks refuse half-configured TLS by name.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest

from shellgate.controller.app.cli import build_parser
from shellgate.controller.app.options import options_from_args
from shellgate.controller.app.security import Security, configure_security
from shellgate.controller.auth.principal import ANONYMOUS_ADMIN
from shellgate.store import ConfigurationError
from tests.auth.sdk import sdk_codes
from tests.support.processes import SHELLGATE, GatewayProcess, free_port, gateways, http_get


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db.sqlite'}"


async def test_plaintext_loopback_without_authentication_serves_and_warns(
    tmp_path: Path,
) -> None:
    gateway = GatewayProcess(sqlite_url(tmp_path), tmp_path / "state")
    async with gateways([gateway]):
        codes = await sdk_codes(gateway.address, [{}])
        _status, body = await asyncio.to_thread(http_get, f"{gateway.http}/readyz")
    assert codes == ["OK"]
    assert "no authentication configured" in gateway.log_text()
    assert "warnings" not in json.loads(body)


def run_serve(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``shellgate serve`` expected to stop at once (a configuration error)."""
    return subprocess.run(
        [
            SHELLGATE, "serve",
            "--database-url", sqlite_url(tmp_path),
            "--state-dir", str(tmp_path / "state"),
            "--http-listen", f"127.0.0.1:{free_port()}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_non_loopback_without_authentication_refuses_to_start(tmp_path: Path) -> None:
    result = run_serve(tmp_path, "--listen", f"0.0.0.0:{free_port()}")
    assert result.returncode == 2, result.stderr
    assert "not a loopback address" in result.stderr
    assert "--allow-unauthenticated" in result.stderr
    assert not (tmp_path / "db.sqlite").exists()  # refused before touching anything


def test_the_listen_address_from_the_environment_is_checked_too(tmp_path: Path) -> None:
    result = run_serve(tmp_path, env={"SHELLGATE_LISTEN": f"[::]:{free_port()}"})
    assert result.returncode == 2 and "not a loopback address" in result.stderr


IDP = "https://idp.example.com"


def security_for(*args: str) -> Security:
    options = options_from_args(build_parser().parse_args(["serve", *args]))
    return configure_security(options.security, options.listen)


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:8080", True),
        ("127.0.0.2:8080", True),
        ("[::1]:8080", True),
        ("localhost:8080", True),
        ("0.0.0.0:8080", False),
        ("[::]:8080", False),
        ("192.0.2.10:8080", False),
        ("gateway.example.com:8080", False),  # a name may resolve anywhere
        ("localhost.example.com:8080", False),
    ],
)
def test_only_loopback_addresses_serve_without_authentication(listen: str, loopback: bool) -> None:
    if loopback:
        assert security_for("--listen", listen).anonymous is ANONYMOUS_ADMIN
        return
    with pytest.raises(ConfigurationError, match="not a loopback address"):
        security_for("--listen", listen)
    allowed = security_for("--listen", listen, "--allow-unauthenticated")
    assert allowed.anonymous is ANONYMOUS_ADMIN and allowed.warnings


def test_with_authentication_a_call_without_credentials_is_nobody(tmp_path: Path) -> None:
    issuer = ("--oidc-issuer", "https://idp.example.com/realms/x")
    security = security_for("--listen", "0.0.0.0:8080", *issuer)
    assert security.anonymous is None and security.modes == ["oidc"] and not security.warnings
    # --allow-unauthenticated does not reopen a gateway that has authentication.
    security = security_for("--listen", "0.0.0.0:8080", *issuer, "--allow-unauthenticated")
    assert security.anonymous is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tls-cert", "a.crt"], "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "ca.crt"], "--tls-client-ca needs --tls-cert"),
        (["--enable-mtls-auth"], "--enable-mtls-auth needs --tls-client-ca"),
        (["--oidc-issuer", "http://idp.example.com/realms/x"], "https"),
        (["--oidc-issuer", IDP, "--oidc-jwks-ttl", "soon"], "--oidc-jwks-ttl"),
        (["--oidc-issuer", IDP, "--oidc-jwks-ttl", "0"], "--oidc-jwks-ttl"),
        (["--oidc-issuer", IDP, "--oidc-audience", ""], "--oidc-audience"),
        (["--tls-cert", "missing.crt", "--tls-key", "missing.key"], "TLS files do not load"),
    ],
)  # fmt: skip
def test_incomplete_security_options_are_refused_by_name(args: list[str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        security_for(*args)


def test_switches_read_their_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELLGATE_ALLOW_UNAUTHENTICATED", "yes")
    assert security_for("--listen", "0.0.0.0:1").warnings
    monkeypatch.setenv("SHELLGATE_ALLOW_UNAUTHENTICATED", "maybe")
    with pytest.raises(ConfigurationError, match="SHELLGATE_ALLOW_UNAUTHENTICATED"):
        security_for()


async def test_allow_unauthenticated_starts_off_loopback_and_says_so_in_readyz(
    tmp_path: Path,
) -> None:
    gateway = GatewayProcess(
        sqlite_url(tmp_path),
        tmp_path / "state",
        env={"SHELLGATE_ALLOW_UNAUTHENTICATED": "true"},
    )
    gateway.extra_args = ["--listen", f"0.0.0.0:{gateway.grpc_port}"]
    async with gateways([gateway]):
        codes = await sdk_codes(gateway.address, [{}])
        status, body = await asyncio.to_thread(http_get, f"{gateway.http}/readyz")
    assert codes == ["OK"]
    assert status == 200  # a warning, not a failed check
    (warning,) = json.loads(body)["warnings"]
    assert "without authentication" in warning and "0.0.0.0" not in warning  # no addresses
    assert f"{warning}: 0.0.0.0:{gateway.grpc_port}" in gateway.log_text()
