"""What a caller may ask of a sandbox's pod, under the operator's policy (pure validation).

A sandbox's template labels and annotations are copied onto the pod the compute backend
creates, and ``runtime_class_name`` / ``user_namespaces`` choose how that pod is isolated.
Keys under prefixes that controllers and meshes act on (``agents.x-k8s.io/`` makes
agent-sandbox adopt or track pods, ``sidecar.istio.io/`` injects proxies, ``openshell.ai/``
is how shellgate finds its own objects) would let a caller steer those controllers, so they
are refused. The isolation choices are the operator's: a caller may pick only what the
operator allowed, so a sandbox cannot opt out of a runtime class the cluster depends on.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shellgate.api import openshell_pb2
from shellgate.reconcilers.errors import FieldViolation

DEFAULT_RESERVED_PREFIXES: tuple[str, ...] = (
    "openshell.ai/",
    "agents.x-k8s.io/",
    "kubernetes.io/",
    "k8s.io/",
    "sidecar.istio.io/",
)
"""Label and annotation prefixes no caller may set on a sandbox's pod."""

_SHOWN = 64
DEFAULT_GATEWAY_ID = "shellgate"


@dataclass(frozen=True, slots=True)
class PodPolicy:
    """The operator's limits on what callers ask of a pod."""

    extra_reserved_prefixes: tuple[str, ...] = ()
    """Prefixes refused besides ``DEFAULT_RESERVED_PREFIXES`` (for example a mesh's own)."""
    runtime_classes: frozenset[str] = frozenset()
    """``runtime_class_name`` values a caller may ask for; empty: none."""
    host_users: frozenset[bool] = frozenset()
    """``hostUsers`` values a caller may ask for (through ``user_namespaces``); empty: none,
    so the cluster's default applies."""

    @property
    def reserved_prefixes(self) -> tuple[str, ...]:
        return DEFAULT_RESERVED_PREFIXES + self.extra_reserved_prefixes


def is_reserved_key(key: str, prefixes: Iterable[str]) -> bool:
    """True for ``prefix/…`` keys and for subdomains of a reserved domain.

    ``node.kubernetes.io/x`` is as much Kubernetes' as ``kubernetes.io/x``: a reserved
    ``domain/`` prefix covers every ``*.domain/`` too. The comparison ignores case, since
    label prefixes are DNS names.
    """
    lowered = key.lower()
    domain, slash, _ = lowered.partition("/")
    for prefix in prefixes:
        wanted = prefix.lower()
        if lowered.startswith(wanted):
            return True
        if slash and wanted.endswith("/") and domain.endswith("." + wanted[:-1]):
            return True
    return False


def _reserved_keys(
    values: Mapping[str, str], field: str, prefixes: tuple[str, ...]
) -> list[FieldViolation]:
    """One violation naming the first reserved key (sorted), so the answer stays small."""
    reserved = sorted(k for k in values if is_reserved_key(k, prefixes))
    if not reserved:
        return []
    shown = reserved[0][:_SHOWN]
    return [
        FieldViolation(
            field,
            f"{field} key {shown!r} uses a reserved prefix; keys under "
            f"{', '.join(prefixes)} are set by the gateway and the cluster only",
        )
    ]


def validate_pod_request(
    spec: openshell_pb2.SandboxSpec, policy: PodPolicy
) -> list[FieldViolation]:
    """Every refusal of ``spec``'s pod-level requests under ``policy``."""
    template = spec.template
    prefixes = policy.reserved_prefixes
    violations = _reserved_keys(template.labels, "spec.template.labels", prefixes)
    violations += _reserved_keys(template.annotations, "spec.template.annotations", prefixes)
    runtime_class = template.runtime_class_name
    if runtime_class and runtime_class not in policy.runtime_classes:
        allowed = ", ".join(sorted(policy.runtime_classes)) or "none"
        violations.append(
            FieldViolation(
                "spec.template.runtime_class_name",
                f"runtime class {runtime_class[:_SHOWN]!r} is not allowed by the gateway "
                f"(allowed: {allowed})",
            )
        )
    if template.HasField("user_namespaces"):
        host_users = not template.user_namespaces
        if host_users not in policy.host_users:
            violations.append(
                FieldViolation(
                    "spec.template.user_namespaces",
                    f"user_namespaces={str(template.user_namespaces).lower()} (hostUsers="
                    f"{str(host_users).lower()}) is not allowed by the gateway",
                )
            )
    return violations


DEFAULT_POD_SECURITY_CONTEXT: Mapping[str, Any] = {
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
DEFAULT_CONTAINER_SECURITY_CONTEXT: Mapping[str, Any] = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}
"""Together these pass the Pod Security ``restricted`` profile, so a sandbox starts in a
namespace that enforces it. The operator may replace either (never a caller)."""


@dataclass(frozen=True)
class PodSettings:
    """The operator's choices for every sandbox pod (flags / chart values, never callers)."""

    gateway_id: str = DEFAULT_GATEWAY_ID
    pod_security_context: Mapping[str, Any] = field(
        default_factory=lambda: copy.deepcopy(dict(DEFAULT_POD_SECURITY_CONTEXT))
    )
    container_security_context: Mapping[str, Any] = field(
        default_factory=lambda: copy.deepcopy(dict(DEFAULT_CONTAINER_SECURITY_CONTEXT))
    )
    policy: PodPolicy = field(default_factory=PodPolicy)
