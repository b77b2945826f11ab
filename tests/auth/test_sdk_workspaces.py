"""Workspaces, membership and identity through the official SDK against a real ``shellgate
serve``: OIDC over TLS with tokens from a throwaway issuer (given, or obtained by the SDK's
client-credentials exchange), and ``from_active_cluster`` reading the on-disk gateway
configuration the OpenShell CLI writes, for an mTLS and an OIDC gateway.

The SDK runs in a subprocess (its generated modules clash with ours); see
tests/support/sdk_workspaces_probe.py for the steps it takes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.oidc_issuer import Issuer, ServiceAccount
from tests.support.pki import TestCA
from tests.support.processes import GatewayProcess, gateways

pytestmark = pytest.mark.slow

PROBE = Path(__file__).parents[1] / "support" / "sdk_workspaces_probe.py"
USER_SCOPES = ["sandbox:read", "sandbox:write", "workspace:read"]


async def sdk(scenario: str, spec: dict[str, Any], env: dict[str, str] | None = None) -> Any:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PROBE),
        scenario,
        json.dumps(spec),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, err.decode()[-3000:]
    return json.loads(out.decode().strip().splitlines()[-1])


def oidc_gateway(tmp_path: Path, ca: TestCA, issuer: Issuer) -> GatewayProcess:
    server = ca.server()
    gateway = GatewayProcess(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "state")
    gateway.extra_args = [
        "--tls-cert", str(server.cert),
        "--tls-key", str(server.key),
        "--oidc-issuer", issuer.url,
        "--oidc-scopes-claim", "scope",
    ]  # fmt: skip
    return gateway


async def test_workspaces_and_membership_with_oidc_over_tls(
    tmp_path: Path, ca: TestCA, issuer: Issuer
) -> None:
    gateway = oidc_gateway(tmp_path, ca, issuer)
    admin = issuer.token(sub="admin-7c1", scope="openid openshell:all")
    user = issuer.token(
        sub="user-42b",
        preferred_username="bob",
        realm_access={"roles": ["openshell-user"]},
        scope=" ".join(["openid", "profile", *USER_SCOPES]),
    )
    spec = {
        "endpoint": f"localhost:{gateway.grpc_port}",
        "ca": str(ca.cert),
        "admin_token": admin,
        "user_token": user,
        "user_subject": "user-42b",
    }
    async with gateways([gateway]):
        seen = await sdk("oidc", spec)
    assert seen == {
        "created": ["team-a", "team-b", "scratch"],
        "got": ["team-a", seen["got"][1]],
        "listed": ["default", "scratch", "team-a", "team-b"],
        "deleted": "COMPLETED",
        "get deleted": "NOT_FOUND",
        "add member": "OK",
        "user lists workspaces": ["team-a"],
        "user creates in own": "mine",
        "user creates in other": "PERMISSION_DENIED",
        "user lists own": ["mine"],
        "user lists all workspaces": "PERMISSION_DENIED",
        "admin lists all workspaces": ["mine"],
        "user creates workspace": "PERMISSION_DENIED",
        "whoami": {
            "subject": "user-42b",
            "display_name": "bob",
            "roles": ["openshell-user"],
            "scopes": USER_SCOPES,
            "provider": "oidc",
        },
        "auth modes": ["oidc"],
        "user asks gateway info": "PERMISSION_DENIED",
        "delete non-empty": "FAILED_PRECONDITION",
        "delete emptied": "COMPLETED",
    }
    assert seen["got"][1].startswith("WORKSPACE_PHASE_")


def configured_home(home: Path, name: str, metadata: dict[str, str]) -> dict[str, str]:
    """A HOME as ``openshell gateway add``/``login`` leave it, with ``name`` active; the
    environment that makes the SDK find it (and nothing of the tester's own)."""
    config = home / ".config" / "openshell"
    (config / "gateways" / name / "mtls").mkdir(parents=True)
    (config / "gateways" / name / "metadata.json").write_text(json.dumps(metadata))
    (config / "active_gateway").write_text(name)
    env = {k: v for k, v in os.environ.items() if k not in {"XDG_CONFIG_HOME", "OPENSHELL_GATEWAY"}}
    return {**env, "HOME": str(home)}


async def test_from_active_cluster_with_mtls(tmp_path: Path, ca: TestCA) -> None:
    server, alice = ca.server(), ca.client("alice")
    gateway = GatewayProcess(f"sqlite:///{tmp_path / 'db.sqlite'}", tmp_path / "state")
    gateway.extra_args = [
        "--tls-cert", str(server.cert),
        "--tls-key", str(server.key),
        "--tls-client-ca", str(ca.cert),
        "--enable-mtls-auth",
    ]  # fmt: skip
    home = tmp_path / "home"
    env = configured_home(
        home,
        "local-mtls",
        {"gateway_endpoint": f"https://127.0.0.1:{gateway.grpc_port}", "auth_mode": "mtls"},
    )
    mtls = home / ".config" / "openshell" / "gateways" / "local-mtls" / "mtls"
    (mtls / "ca.crt").write_bytes(ca.cert.read_bytes())
    (mtls / "tls.crt").write_bytes(alice.cert.read_bytes())
    (mtls / "tls.key").write_bytes(alice.key.read_bytes())
    async with gateways([gateway]):
        seen = await sdk("active", {}, env)
    assert seen == {
        "whoami": {
            "subject": alice.subject,
            "display_name": "alice",
            "roles": [],
            "scopes": [],
            "provider": "mtls",
        },
        "listed": [],
    }


async def test_from_active_cluster_with_oidc(tmp_path: Path, ca: TestCA, issuer: Issuer) -> None:
    gateway = oidc_gateway(tmp_path, ca, issuer)
    home = tmp_path / "home"
    env = configured_home(
        home,
        "keycloak",
        {
            "gateway_endpoint": f"https://127.0.0.1:{gateway.grpc_port}",
            "auth_mode": "oidc",
            "oidc_issuer": issuer.url,
            "oidc_client_id": "openshell-cli",
        },
    )
    directory = home / ".config" / "openshell" / "gateways" / "keycloak"
    (directory / "mtls" / "ca.crt").write_bytes(ca.cert.read_bytes())
    token = {
        "access_token": issuer.token(
            sub="carol-9", preferred_username="carol", scope="openid sandbox:read"
        ),
        "expires_at": int(time.time()) + 300,
        "issuer": issuer.url,
    }
    (directory / "oidc_token.json").write_text(json.dumps(token))
    async with gateways([gateway]):
        seen = await sdk("active", {}, env)
    assert seen == {
        "whoami": {
            "subject": "carol-9",
            "display_name": "carol",
            "roles": ["openshell-admin", "openshell-user"],
            "scopes": ["sandbox:read"],
            "provider": "oidc",
        },
        "listed": [],
    }


async def test_a_service_account_through_client_credentials(
    tmp_path: Path, ca: TestCA, issuer: Issuer
) -> None:
    """The SDK exchanges a client id and secret at the issuer's token endpoint and sends the
    token it gets; a wrong secret fails at the exchange, before any call reaches the gateway."""
    issuer.clients["ci-bot"] = ServiceAccount(secret="s3cret", subject="svc-ci-bot")
    gateway = oidc_gateway(tmp_path, ca, issuer)
    spec = {
        "endpoint": f"localhost:{gateway.grpc_port}",
        "ca": str(ca.cert),
        "issuer": issuer.url,
        "client_id": "ci-bot",
        "secrets": ["s3cret", "wrong"],
    }
    async with gateways([gateway]):
        good, wrong = await sdk("client_credentials", spec)
    assert good == {
        "subject": "svc-ci-bot",
        "display_name": "service-account-ci-bot",
        "roles": ["openshell-user"],
        "scopes": ["sandbox:read"],
        "provider": "oidc",
    }
    assert wrong.startswith("SandboxError") and "HTTP 401" in wrong
    assert issuer.requests["token"] == 2


async def test_from_active_cluster_with_client_credentials(
    tmp_path: Path, ca: TestCA, issuer: Issuer
) -> None:
    """``from_active_cluster(client_credentials=...)`` takes the issuer and client id from the
    gateway's metadata; only the secret is the caller's."""
    issuer.clients["ci-bot"] = ServiceAccount(secret="s3cret", subject="svc-ci-bot")
    gateway = oidc_gateway(tmp_path, ca, issuer)
    home = tmp_path / "home"
    env = configured_home(
        home,
        "keycloak",
        {
            "gateway_endpoint": f"https://127.0.0.1:{gateway.grpc_port}",
            "auth_mode": "oidc",
            "oidc_issuer": issuer.url,
            "oidc_client_id": "ci-bot",
            "oidc_scopes": "sandbox:read",
        },
    )
    mtls = home / ".config" / "openshell" / "gateways" / "keycloak" / "mtls"
    (mtls / "ca.crt").write_bytes(ca.cert.read_bytes())
    async with gateways([gateway]):
        seen = await sdk("active", {"client_secret": "s3cret"}, env)
    assert seen["whoami"]["subject"] == "svc-ci-bot"
    assert seen["whoami"]["scopes"] == ["sandbox:read"]
    assert seen["listed"] == "PERMISSION_DENIED"  # a service account is nobody's member yet
