"""The Kubernetes driver's operator settings: flags, their variables, and their checks.

Every sandbox pod gets the operator's security contexts; callers choose a runtime class or
``hostUsers`` only from the operator's allowlists, and may not use reserved label prefixes.
The settings are read once at start, and a bad value is refused with its flag's name before
anything connects.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from shellgate.reconcilers.pod_policy import (
    DEFAULT_CONTAINER_SECURITY_CONTEXT,
    DEFAULT_GATEWAY_ID,
    DEFAULT_POD_SECURITY_CONTEXT,
    PodPolicy,
    PodSettings,
)
from shellgate.store import ConfigurationError

DEFAULT_PROVISIONING_DEADLINE = "600"
_LABEL_VALUE = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_PREFIX = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/")

KUBERNETES_FLAGS: list[tuple[str, str, str, str]] = [
    (
        "--gateway-id",
        "SHELLGATE_GATEWAY_ID",
        DEFAULT_GATEWAY_ID,
        "kubernetes: this installation's id, labelled on its objects (openshell.ai/gateway-id)",
    ),
    (
        "--sandbox-pod-security-context",
        "SHELLGATE_SANDBOX_POD_SECURITY_CONTEXT",
        json.dumps(DEFAULT_POD_SECURITY_CONTEXT, separators=(",", ":")),
        "kubernetes: the pod securityContext of every sandbox (JSON; {} for none)",
    ),
    (
        "--sandbox-container-security-context",
        "SHELLGATE_SANDBOX_CONTAINER_SECURITY_CONTEXT",
        json.dumps(DEFAULT_CONTAINER_SECURITY_CONTEXT, separators=(",", ":")),
        "kubernetes: the container securityContext of every sandbox (JSON; {} for none)",
    ),
    (
        "--sandbox-runtime-classes",
        "SHELLGATE_SANDBOX_RUNTIME_CLASSES",
        "",
        "kubernetes: runtime classes callers may ask for (comma-separated)",
    ),
    (
        "--sandbox-host-users",
        "SHELLGATE_SANDBOX_HOST_USERS",
        "",
        "kubernetes: hostUsers values callers may ask for (true, false, or both)",
    ),
    (
        "--reserved-label-prefixes",
        "SHELLGATE_RESERVED_LABEL_PREFIXES",
        "",
        "kubernetes: more label/annotation prefixes callers may not use (comma-separated)",
    ),
    (
        "--provisioning-deadline-seconds",
        "SHELLGATE_PROVISIONING_DEADLINE_SECONDS",
        DEFAULT_PROVISIONING_DEADLINE,
        "kubernetes: a sandbox still provisioning or starting after this long is ERROR (0: never)",
    ),
]
"""(flag, environment variable, default, help), added to ``serve`` like its other flags."""


def _arg(args: argparse.Namespace, flag: str) -> str:
    return str(getattr(args, flag.removeprefix("--").replace("-", "_")))


def _items(raw: str) -> list[str]:
    return [item.strip() for item in raw.split(",") if item.strip()]


def _security_context(args: argparse.Namespace, flag: str) -> dict[str, Any]:
    raw = _arg(args, flag)
    try:
        value = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise ConfigurationError(f"{flag} must be a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigurationError(f"{flag} must be a JSON object, got {raw[:60]!r}")
    return value


def _host_users(args: argparse.Namespace) -> frozenset[bool]:
    values = set()
    for item in _items(_arg(args, "--sandbox-host-users")):
        if item.lower() not in ("true", "false"):
            raise ConfigurationError(f"--sandbox-host-users takes true and/or false, got {item!r}")
        values.add(item.lower() == "true")
    return frozenset(values)


def _prefixes(args: argparse.Namespace) -> tuple[str, ...]:
    prefixes = tuple(_items(_arg(args, "--reserved-label-prefixes")))
    for prefix in prefixes:
        if not _PREFIX.fullmatch(prefix):
            raise ConfigurationError(
                f"--reserved-label-prefixes entries are DNS prefixes ending in '/', got "
                f"{prefix[:60]!r}"
            )
    return prefixes


def pod_settings_from_args(args: argparse.Namespace) -> PodSettings:
    gateway_id = _arg(args, "--gateway-id")
    if not _LABEL_VALUE.fullmatch(gateway_id):
        raise ConfigurationError(f"--gateway-id must be a label value, got {gateway_id[:70]!r}")
    return PodSettings(
        gateway_id=gateway_id,
        pod_security_context=_security_context(args, "--sandbox-pod-security-context"),
        container_security_context=_security_context(args, "--sandbox-container-security-context"),
        policy=PodPolicy(
            extra_reserved_prefixes=_prefixes(args),
            runtime_classes=frozenset(_items(_arg(args, "--sandbox-runtime-classes"))),
            host_users=_host_users(args),
        ),
    )


def provisioning_deadline_from_args(args: argparse.Namespace) -> float:
    raw = _arg(args, "--provisioning-deadline-seconds")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ConfigurationError(
            f"--provisioning-deadline-seconds must be a number >= 0, got {raw[:40]!r}"
        )
    return value
