"""``shellgate serve`` options: flags, their environment variables and defaults, checked once.

Bad values are refused here with the flag's name, before anything connects or listens.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shellgate.controller.app.kubernetes_options import (
    KUBERNETES_FLAGS,
    pod_settings_from_args,
    provisioning_deadline_from_args,
)
from shellgate.controller.auth.oidc import OidcSettings
from shellgate.controller.limits import Limits
from shellgate.reconcilers.pod_policy import PodSettings
from shellgate.store import ConfigurationError

DEFAULT_DATABASE_URL = "sqlite:///./.shellgate/shellgate.db"


@dataclass
class SecurityOptions:
    """Transport and authentication (see ``app/security.py`` for what they add up to)."""

    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    enable_mtls_auth: bool = False
    allow_unauthenticated: bool = False
    oidc: OidcSettings | None = None


@dataclass
class ServeOptions:
    database_url: str = DEFAULT_DATABASE_URL
    listen: str = "127.0.0.1:8080"
    http_listen: str = "127.0.0.1:9090"
    driver: str = "local"
    replica_id: str = field(default_factory=socket.gethostname)
    log_format: str = "text"
    state_dir: str = "./.shellgate"
    namespace: str = ""
    sandbox_image: str = ""
    sweep_interval: float = 60.0
    encryption_key_file: str = ""
    advertise_address: str = ""
    limits: Limits = field(default_factory=Limits)
    security: SecurityOptions = field(default_factory=SecurityOptions)
    pod_settings: PodSettings = field(default_factory=PodSettings)
    provisioning_deadline: float = 600.0


SWITCHES = {
    "--enable-mtls-auth": "a verified client certificate's subject is a platform admin",
    "--allow-unauthenticated": "serve without authentication on a non-loopback address",
}
SECURITY_FLAGS: list[tuple[str, str, str]] = [
    ("--tls-cert", "", "server certificate chain (PEM): serve gRPC over TLS"),
    ("--tls-key", "", "server private key (PEM)"),
    ("--tls-client-ca", "", "CA bundle (PEM): require client certificates that chain to it"),
    ("--oidc-issuer", "", "OIDC issuer URL: accept its bearer tokens"),
    ("--oidc-audience", "openshell-cli", "the tokens' required audience"),
    ("--oidc-roles-claim", "realm_access.roles", "dot path of the roles claim"),
    ("--oidc-admin-role", "openshell-admin", "role that makes a platform admin"),
    ("--oidc-user-role", "openshell-user", "role every user needs"),
    ("--oidc-scopes-claim", "", "dot path of the scopes claim; empty: no scope checks"),
    ("--oidc-jwks-ttl", "3600", "seconds the issuer's keys are kept"),
]
"""Flag, default, help; each also as SHELLGATE_ + the flag in capitals."""


_DEFAULT_LIMITS = Limits()
LIMIT_FLAGS: list[tuple[str, str, str]] = [
    ("max_receive_message_bytes", "--grpc-max-receive-bytes", "largest request accepted"),
    ("max_send_message_bytes", "--grpc-max-send-bytes", "largest response sent"),
    ("max_concurrent_rpcs", "--grpc-max-concurrent-rpcs", "RPCs in flight, streams included"),
    ("max_watch_streams", "--max-watch-streams", "open WatchSandbox streams"),
    ("max_exec_sessions", "--max-exec-sessions", "open exec calls"),
    ("keepalive_seconds", "--grpc-keepalive-seconds", "server keepalive ping interval"),
    ("max_connection_age_seconds", "--grpc-max-connection-age-seconds", "connection lifetime"),
    (
        "max_connection_age_grace_seconds",
        "--grpc-max-connection-age-grace-seconds",
        "time calls get to finish when a connection is aged out",
    ),
    (
        "database_statement_timeout_seconds",
        "--database-statement-timeout-seconds",
        "Postgres statement_timeout",
    ),
    (
        "database_acquire_timeout_seconds",
        "--database-acquire-timeout-seconds",
        "Postgres wait for a connection",
    ),
]
"""Each bound of ``Limits``: its field, its flag (the variable is SHELLGATE_ + the flag)."""


def limit_env(flag: str) -> str:
    return "SHELLGATE_" + flag.removeprefix("--").replace("-", "_").upper()


def env_default(name: str, default: str) -> str:
    """The flag's default: its environment variable when set, else ``default``."""
    return os.environ.get(name, default)


def add_serve_command(commands: Any, run: Callable[[argparse.Namespace], int]) -> None:
    """The ``serve`` subcommand; every flag has an environment variable and a default."""
    serve = commands.add_parser("serve", help="run the gateway")
    options: list[tuple[str, str, str, str]] = [
        ("--database-url", "SHELLGATE_DATABASE_URL", DEFAULT_DATABASE_URL, "database URL"),
        ("--listen", "SHELLGATE_LISTEN", "127.0.0.1:8080", "gRPC listen address"),
        ("--http-listen", "SHELLGATE_HTTP_LISTEN", "127.0.0.1:9090", "/healthz, /readyz, /metrics"),
        ("--driver", "SHELLGATE_DRIVER", "local", "compute driver: local or kubernetes"),
        ("--replica-id", "SHELLGATE_REPLICA_ID", socket.gethostname(), "this replica's name"),
        ("--log-format", "SHELLGATE_LOG_FORMAT", "text", "text or json"),
        ("--state-dir", "SHELLGATE_STATE_DIR", "./.shellgate", "local driver working directory"),
        ("--namespace", "SHELLGATE_NAMESPACE", "", "kubernetes: namespace of Sandbox objects"),
        ("--sandbox-image", "SHELLGATE_SANDBOX_IMAGE", "", "kubernetes: default sandbox image"),
        ("--sweep-interval", "SHELLGATE_SWEEP_INTERVAL", "60", "seconds between sweeps"),
        (
            "--encryption-key-file",
            "SHELLGATE_ENCRYPTION_KEY_FILE",
            "",
            "keys that seal provider credentials (SQLite: generated beside the database if unset)",
        ),
        (
            "--advertise-address",
            "SHELLGATE_ADVERTISE_ADDRESS",
            "",
            "HOST:PORT other replicas reach this one's gRPC at (default: --listen's host, or "
            "this host's name when that is a wildcard, with the bound port)",
        ),
    ]
    options += KUBERNETES_FLAGS
    for name, flag, text in LIMIT_FLAGS:
        options.append((flag, limit_env(flag), str(getattr(_DEFAULT_LIMITS, name)), text))
    for flag, default, text in SECURITY_FLAGS:
        options.append((flag, limit_env(flag), default, text))
    for flag, env, default, text in options:
        serve.add_argument(
            flag, default=env_default(env, default), help=f"{text} ({env}; default %(default)s)"
        )
    for flag, text in SWITCHES.items():
        env = limit_env(flag)
        default = env_default(env, "false")
        serve.add_argument(
            flag, action="store_const", const="true", default=default, help=f"{text} ({env}=true)"
        )
    serve.set_defaults(run=run)


def options_from_args(args: argparse.Namespace) -> ServeOptions:
    if args.driver not in ("local", "kubernetes"):
        raise ConfigurationError(f"--driver must be local or kubernetes, got {args.driver!r}")
    if args.log_format not in ("text", "json"):
        raise ConfigurationError(f"--log-format must be text or json, got {args.log_format!r}")
    try:
        sweep = float(args.sweep_interval)
    except ValueError as exc:
        raise ConfigurationError(f"--sweep-interval must be a number: {exc}") from None
    for flag, address in (("--listen", args.listen), ("--http-listen", args.http_listen)):
        split_address(address, flag)
    if args.advertise_address:
        split_address(args.advertise_address, "--advertise-address")
    return ServeOptions(
        database_url=args.database_url,
        listen=args.listen,
        http_listen=args.http_listen,
        driver=args.driver,
        replica_id=args.replica_id,
        log_format=args.log_format,
        state_dir=args.state_dir,
        namespace=args.namespace,
        sandbox_image=args.sandbox_image,
        sweep_interval=sweep,
        encryption_key_file=args.encryption_key_file,
        advertise_address=args.advertise_address,
        limits=limits_from_args(args),
        security=security_from_args(args),
        pod_settings=pod_settings_from_args(args),
        provisioning_deadline=provisioning_deadline_from_args(args),
    )


def security_from_args(args: argparse.Namespace) -> SecurityOptions:
    """TLS files go together (a client CA needs a server certificate; mTLS identity needs a
    client CA); booleans are true/false/1/0/yes/no."""
    switch = {flag: _boolean(flag, getattr(args, _dest(flag))) for flag in SWITCHES}
    cert, key, client_ca = args.tls_cert, args.tls_key, args.tls_client_ca
    if bool(cert) != bool(key):
        raise ConfigurationError("--tls-cert and --tls-key go together")
    if client_ca and not cert:
        raise ConfigurationError("--tls-client-ca needs --tls-cert and --tls-key")
    if switch["--enable-mtls-auth"] and not client_ca:
        raise ConfigurationError("--enable-mtls-auth needs --tls-client-ca")
    oidc = None
    if args.oidc_issuer:
        try:
            ttl = float(args.oidc_jwks_ttl)
        except ValueError:
            raise ConfigurationError("--oidc-jwks-ttl must be a number of seconds") from None
        oidc = OidcSettings(
            issuer=args.oidc_issuer,
            audience=args.oidc_audience,
            roles_claim=args.oidc_roles_claim,
            admin_role=args.oidc_admin_role,
            user_role=args.oidc_user_role,
            scopes_claim=args.oidc_scopes_claim,
            jwks_ttl_seconds=ttl,
        )
    return SecurityOptions(
        tls_cert=cert,
        tls_key=key,
        tls_client_ca=client_ca,
        enable_mtls_auth=switch["--enable-mtls-auth"],
        allow_unauthenticated=switch["--allow-unauthenticated"],
        oidc=oidc,
    )


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def _boolean(flag: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no", ""):
        return False
    raise ConfigurationError(f"{flag} ({limit_env(flag)}) must be true or false, got {raw[:20]!r}")


def limits_from_args(args: argparse.Namespace) -> Limits:
    """Every limit flag as a positive integer; a bad one names its flag."""
    values: dict[str, int] = {}
    for name, flag, _text in LIMIT_FLAGS:
        raw = str(getattr(args, flag.removeprefix("--").replace("-", "_")))
        if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
            raise ConfigurationError(f"{flag} must be a positive integer, got {raw[:40]!r}")
        values[name] = int(raw)
    return Limits(**values)


def split_address(address: str, flag: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigurationError(f"{flag} must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def advertised_address(config: ServeOptions, bound_port: int) -> str:
    """Where other replicas reach this one: ``--advertise-address``, else the listen host
    (this host's name for a wildcard) with the port actually bound."""
    if config.advertise_address:
        return config.advertise_address
    host, _port = split_address(config.listen, "--listen")
    if host in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"[{host}]:{bound_port}" if ":" in host else f"{host}:{bound_port}"
