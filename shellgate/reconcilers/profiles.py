"""Provider profiles: the built-in ones, and the rules a custom profile must pass.

A profile describes a kind of provider (its credentials and the environment variables they
fill, the endpoints and binaries it needs); a provider uses the profile whose id equals its
``type``. Built-in profiles ship with shellgate for the provider types it knows and cannot
be overwritten or deleted; custom ones are imported per workspace. Lint, import and update
answer problems as diagnostics (``severity: error``), the way the reference does, so a
client can show all of them at once; nothing is stored while any error remains.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from shellgate.api import openshell_pb2, sandbox_pb2
from shellgate.reconcilers.policy import MAX_PORT

Profile = openshell_pb2.ProviderProfile
ImportItem = openshell_pb2.ProviderProfileImportItem
Diagnostic = openshell_pb2.ProviderProfileDiagnostic

BUILTIN_SOURCE = "builtin"
MAX_PROFILE_ID_LEN = 63
MAX_PROFILE_SIZE = 64 * 1024
MAX_PROFILES_PER_REQUEST = 64
_ID = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ERROR = "error"


def profile_type(provider_type: str) -> str:
    """The profile id a provider's type names (types compare trimmed, case-insensitively)."""
    return provider_type.strip().lower()


def _endpoint(host: str, port: int = 443) -> sandbox_pb2.NetworkEndpoint:
    return sandbox_pb2.NetworkEndpoint(host=host, port=port)


def _credential(name: str, *env_vars: str) -> openshell_pb2.ProviderProfileCredential:
    return openshell_pb2.ProviderProfileCredential(
        name=name,
        env_vars=list(env_vars),
        required=True,
        auth_style="bearer",
        header_name="authorization",
    )


def _builtin(
    profile_id: str,
    display_name: str,
    category: int,
    credentials: Iterable[openshell_pb2.ProviderProfileCredential],
    hosts: Iterable[str],
    **extra: object,
) -> Profile:
    made = Profile(
        id=profile_id,
        display_name=display_name,
        category=category,  # type: ignore[arg-type]
        credentials=list(credentials),
        endpoints=[_endpoint(h) for h in hosts],
        source=BUILTIN_SOURCE,
        **extra,  # type: ignore[arg-type]
    )
    made.discovery.credentials.extend(c.name for c in made.credentials)
    return made


BUILTIN_PROFILES: dict[str, Profile] = {
    p.id: p
    for p in (
        _builtin(
            "github",
            "GitHub",
            openshell_pb2.PROVIDER_PROFILE_CATEGORY_SOURCE_CONTROL,
            [_credential("api_token", "GITHUB_TOKEN", "GH_TOKEN")],
            ["api.github.com", "github.com"],
            description="GitHub API and Git operations",
        ),
        _builtin(
            "nvidia",
            "NVIDIA",
            openshell_pb2.PROVIDER_PROFILE_CATEGORY_INFERENCE,
            [_credential("api_key", "NVIDIA_API_KEY")],
            ["integrate.api.nvidia.com"],
            description="NVIDIA inference endpoints",
            inference_capable=True,
        ),
        _builtin(
            "pypi",
            "PyPI",
            openshell_pb2.PROVIDER_PROFILE_CATEGORY_DATA,
            [],
            ["pypi.org", "files.pythonhosted.org"],
            description="Python package installation from PyPI",
        ),
    )
}
"""The provider types shellgate knows, keyed by id."""


@dataclass(frozen=True)
class Candidate:
    source: str
    profile: Profile


def _diagnostic(source: str, profile_id: str, field: str, message: str) -> Diagnostic:
    return Diagnostic(
        source=source, profile_id=profile_id, field=field, message=message, severity=ERROR
    )


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.severity == ERROR for d in diagnostics)


def candidates(items: Iterable[ImportItem]) -> tuple[list[Candidate], list[Diagnostic]]:
    """The profiles of a request's items, each normalised for storage (the source it came
    from is kept, the version is the store's); items without a profile are diagnostics."""
    found, diagnostics = [], []
    for item in items:
        if not item.HasField("profile"):
            diagnostics.append(
                _diagnostic(item.source, "", "profile", "provider profile is required")
            )
            continue
        profile = Profile()
        profile.CopyFrom(item.profile)
        profile.resource_version = 0
        profile.source = item.source or profile.source
        found.append(Candidate(item.source, profile))
    if not found and not diagnostics:
        diagnostics.append(
            _diagnostic("", "", "profiles", "at least one provider profile is required")
        )
    if len(found) > MAX_PROFILES_PER_REQUEST:
        diagnostics.append(
            _diagnostic(
                "", "", "profiles", f"at most {MAX_PROFILES_PER_REQUEST} profiles per request"
            )
        )
    return found, diagnostics


def id_problem(profile_id: str) -> str | None:
    if not profile_id.strip():
        return "id is required"
    if len(profile_id) > MAX_PROFILE_ID_LEN or _ID.fullmatch(profile_id) is None:
        return "id must be lowercase kebab-case using only a-z, 0-9, and '-'"
    return None


def lint_profile(candidate: Candidate) -> list[Diagnostic]:
    """Everything one profile must satisfy on its own."""
    profile, source = candidate.profile, candidate.source
    out: list[Diagnostic] = []

    def problem(field: str, message: str) -> None:
        out.append(_diagnostic(source, profile.id, field, message))

    if (message := id_problem(profile.id)) is not None:
        problem("id", message)
    elif profile.id in BUILTIN_PROFILES:
        problem(
            "id",
            f"provider profile {profile.id!r} is managed by source {BUILTIN_SOURCE!r} "
            "and cannot be overwritten",
        )
    if profile.ByteSize() > MAX_PROFILE_SIZE:
        problem("profile", f"provider profile exceeds {MAX_PROFILE_SIZE} bytes")
    names: set[str] = set()
    env_vars: set[str] = set()
    for index, credential in enumerate(profile.credentials):
        field = f"credentials[{index}]"
        if not credential.name.strip():
            problem(f"{field}.name", "credential name is required")
        elif credential.name in names:
            problem(f"{field}.name", f"duplicate credential name {credential.name!r}")
        names.add(credential.name)
        for env_var in credential.env_vars:
            if _ENV_VAR.fullmatch(env_var) is None:
                problem(f"{field}.env_vars", f"invalid environment variable {env_var[:64]!r}")
            elif env_var in env_vars:
                problem(f"{field}.env_vars", f"duplicate environment variable {env_var!r}")
            env_vars.add(env_var)
    for index, endpoint in enumerate(profile.endpoints):
        field = f"endpoints[{index}]"
        if not endpoint.host.strip():
            problem(f"{field}.host", "endpoint host is required")
        ports = list(endpoint.ports) or [endpoint.port]
        if any(not 0 < port <= MAX_PORT for port in ports):
            problem(f"{field}.port", f"endpoint ports must be in 1..={MAX_PORT}")
    for name in profile.discovery.credentials:
        if name not in names:
            problem("discovery.credentials", f"discovery names unknown credential {name!r}")
    return out


def lint_set(found: Iterable[Candidate]) -> list[Diagnostic]:
    """Each profile's own problems, and ids repeated within the request."""
    out: list[Diagnostic] = []
    seen: set[str] = set()
    for candidate in found:
        out += lint_profile(candidate)
        if candidate.profile.id in seen:
            out.append(
                _diagnostic(
                    candidate.source,
                    candidate.profile.id,
                    "id",
                    f"provider profile {candidate.profile.id!r} appears more than once",
                )
            )
        seen.add(candidate.profile.id)
    return out


def already_exists(candidate: Candidate) -> Diagnostic:
    return _diagnostic(
        candidate.source,
        candidate.profile.id,
        "id",
        f"provider profile {candidate.profile.id!r} already exists; update it instead",
    )
