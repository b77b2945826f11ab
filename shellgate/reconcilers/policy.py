"""Policy decisions: validation, hashing, revision states.

Every policy that could become a revision, a full policy from a client, the result of merge
operations or of an approved draft chunk, passes ``validate_policy`` *before* anything is
written: the 262 144-byte size limit, the reference's safety checks (no root identity,
absolute filesystem paths without ``..``, no read-write ``/``, at most 256 paths of at most
4096 bytes, no TLD-wide host wildcards) and the shape of every network rule.

Revision status changes are mutations checked against the freshly read state, so a status
read before a racing write can never be written back over it:
pending becomes loaded or failed once; a repeated report is a no-op; a report about a
revision already superseded by a newer one is a no-op; loaded and failed never flip into each
other. ``supersede`` retires pending and loaded revisions only.

Merge operations live in ``policy_merge``; this module re-exports what handlers need.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Callable, Iterable

from shellgate.api import internal_pb2, openshell_pb2, sandbox_pb2
from shellgate.reconcilers.ambiguity import require_unambiguous_endpoints
from shellgate.reconcilers.errors import FailedPrecondition, FieldViolation, InvalidArgument
from shellgate.reconcilers.validation import MAX_POLICY_SIZE, validate_encoded_size

SandboxPolicy = sandbox_pb2.SandboxPolicy
NetworkPolicyRule = sandbox_pb2.NetworkPolicyRule
StoredPolicyRevision = internal_pb2.StoredPolicyRevision

GLOBAL_SCOPE = "__global__"
"""The scope (sandbox id column) of global policy revisions."""
SANDBOX_IDENTITY = "sandbox"
"""The process identity a policy gets when it names none (the reference's default)."""
MAX_FILESYSTEM_PATHS = 256
"""read_only + read_write entries of one policy."""
MAX_PATH_LENGTH = 4096
"""One filesystem path (bytes)."""
MAX_PORT = 65_535

PENDING = openshell_pb2.POLICY_STATUS_PENDING
LOADED = openshell_pb2.POLICY_STATUS_LOADED
FAILED = openshell_pb2.POLICY_STATUS_FAILED
SUPERSEDED = openshell_pb2.POLICY_STATUS_SUPERSEDED
STATUS_WORDS: dict[int, str] = {
    PENDING: "pending",
    LOADED: "loaded",
    FAILED: "failed",
    SUPERSEDED: "superseded",
}
"""The status column's words, as the reference stores them."""
ACTIVE_WORDS = ("pending", "loaded")
"""Statuses a newer revision supersedes."""


# --- hashing and defaults ---------------------------------------------------------------------


def policy_hash(policy: SandboxPolicy) -> str:
    """SHA-256 of the deterministic encoding: equal policies, equal hash, on every replica."""
    return hashlib.sha256(policy.SerializeToString(deterministic=True)).hexdigest()


def with_default_identity(policy: SandboxPolicy) -> SandboxPolicy:
    """A copy whose process identity defaults to ``sandbox`` where the policy names none.

    The reference fills the identity in before its safety check, so a policy without one
    and the same policy with ``sandbox`` spelled out are one policy (one hash).
    """
    copied = SandboxPolicy()
    copied.CopyFrom(policy)
    if not copied.process.run_as_user:
        copied.process.run_as_user = SANDBOX_IDENTITY
    if not copied.process.run_as_group:
        copied.process.run_as_group = SANDBOX_IDENTITY
    return copied


# --- validation -------------------------------------------------------------------------------


def _is_root(identity: str) -> bool:
    return identity.strip() in ("root", "0")


def _identity_violations(policy: SandboxPolicy, field: str) -> list[FieldViolation]:
    return [
        FieldViolation(
            f"{field}.process.{attr}",
            f"{field}.process.{attr} cannot be {value!r}: root is not allowed",
        )
        for attr in ("run_as_user", "run_as_group")
        if _is_root(value := getattr(policy.process, attr))
    ]


def _path_violations(path: str, field: str) -> list[FieldViolation]:
    if len(path.encode()) > MAX_PATH_LENGTH:
        return [FieldViolation(field, f"{field} path exceeds maximum length of {MAX_PATH_LENGTH}")]
    violations = []
    if not path.startswith("/"):
        violations.append(FieldViolation(field, f"{field} path {path!r} must be absolute"))
    if ".." in path.split("/"):
        violations.append(
            FieldViolation(field, f"{field} path {path!r} contains a '..' traversal component")
        )
    return violations


def _filesystem_violations(policy: SandboxPolicy, field: str) -> list[FieldViolation]:
    fs = policy.filesystem
    violations: list[FieldViolation] = []
    total = len(fs.read_only) + len(fs.read_write)
    if total > MAX_FILESYSTEM_PATHS:
        violations.append(
            FieldViolation(
                f"{field}.filesystem",
                f"{field}.filesystem has too many paths ({total} > {MAX_FILESYSTEM_PATHS})",
            )
        )
    for attr in ("read_only", "read_write"):
        for path in getattr(fs, attr):
            violations += _path_violations(path, f"{field}.filesystem.{attr}")
    for path in fs.read_write:
        if path.startswith("/") and not path.strip("/"):
            violations.append(
                FieldViolation(
                    f"{field}.filesystem.read_write",
                    f"{field}.filesystem.read_write path {path!r} is overly broad",
                )
            )
    return violations


def is_tld_wildcard(host: str) -> bool:
    """``*`` or ``*.com``: a wildcard that matches a whole top-level domain or everything."""
    return host == "*" or (host.startswith("*.") and "." not in host[2:])


def is_always_blocked(address: str) -> bool:
    """An address no rule may open: loopback, link-local (cloud metadata), unspecified,
    multicast, or the name ``localhost``. The sandbox proxy refuses them whatever the policy
    says, so a rule naming one could never work and is refused up front."""
    text = address.strip().lower().rstrip(".")
    if text == "localhost" or text.endswith(".localhost"):
        return True
    try:
        network = ipaddress.ip_network(text.strip("[]"), strict=False)
    except ValueError:
        return False
    return any(
        (network.is_loopback, network.is_link_local, network.is_unspecified, network.is_multicast)
    )


def _ports(endpoint: sandbox_pb2.NetworkEndpoint) -> list[int]:
    return list(endpoint.ports) or ([endpoint.port] if endpoint.port else [])


def _endpoint_violations(endpoint: sandbox_pb2.NetworkEndpoint, field: str) -> list[FieldViolation]:
    violations = []
    if not endpoint.host.strip():
        violations.append(FieldViolation(f"{field}.host", f"{field}.host is required"))
    elif is_tld_wildcard(endpoint.host.strip()):
        violations.append(
            FieldViolation(
                f"{field}.host", f"{field}.host {endpoint.host!r} is a TLD wildcard: too broad"
            )
        )
    elif is_always_blocked(endpoint.host):
        violations.append(
            FieldViolation(f"{field}.host", f"{field}.host {endpoint.host!r} is always blocked")
        )
    ports = _ports(endpoint)
    if not ports or any(not 0 < port <= MAX_PORT for port in ports):
        violations.append(
            FieldViolation(f"{field}.port", f"{field} needs ports between 1 and {MAX_PORT}")
        )
    for address in endpoint.allowed_ips:
        if is_always_blocked(address):
            violations.append(
                FieldViolation(
                    f"{field}.allowed_ips",
                    f"{field}.allowed_ips entry {address!r} is always blocked",
                )
            )
    return violations


def validate_rule(rule: NetworkPolicyRule, field: str) -> list[FieldViolation]:
    """The shape of one network rule: at least one endpoint, each with a host that is not a
    TLD wildcard or always blocked and ports in 1..65535; binaries with absolute paths."""
    violations: list[FieldViolation] = []
    if not rule.endpoints:
        violations.append(FieldViolation(f"{field}.endpoints", f"{field} needs an endpoint"))
    for index, endpoint in enumerate(rule.endpoints):
        violations += _endpoint_violations(endpoint, f"{field}.endpoints[{index}]")
    for binary in rule.binaries:
        violations += _path_violations(binary.path, f"{field}.binaries")
    return violations


def validate_policy(policy: SandboxPolicy, field: str = "policy") -> list[FieldViolation]:
    """Everything a candidate policy must satisfy before it may become a revision."""
    violations = validate_encoded_size(policy.ByteSize(), field, MAX_POLICY_SIZE)
    if violations:
        return violations  # do not walk a policy too large to store
    violations += _identity_violations(policy, field)
    violations += _filesystem_violations(policy, field)
    for name in sorted(policy.network_policies):
        violations += validate_rule(policy.network_policies[name], f"{field}.network_policies")
    return violations


def require_valid_policy(policy: SandboxPolicy, field: str = "policy") -> None:
    violations = validate_policy(policy, field)
    if violations:
        raise InvalidArgument(violations)


def require_acceptable_policy(policy: SandboxPolicy, field: str = "policy") -> None:
    """Everything a policy must pass to be stored, in the reference's order: the safety
    checks (INVALID_ARGUMENT), then endpoint ambiguity (FAILED_PRECONDITION)."""
    require_valid_policy(policy, field)
    require_unambiguous_endpoints(policy)


def _missing(before: Iterable[str], after: Iterable[str]) -> list[str]:
    kept = set(after)
    return [path for path in before if path not in kept]


def validate_static_fields(baseline: SandboxPolicy, candidate: SandboxPolicy) -> None:
    """Fields applied at sandbox start cannot change on a live sandbox (INVALID_ARGUMENT).

    Filesystem changes may only add paths (include_workdir fixed); landlock and process must
    be equal. Both sides get the default identity first, so "unset" equals "sandbox".
    """
    base, new = with_default_identity(baseline), with_default_identity(candidate)
    field = "policy"
    if base.HasField("filesystem"):
        if not new.HasField("filesystem"):
            raise InvalidArgument.single(
                f"{field}.filesystem", "filesystem policy cannot be removed on a live sandbox"
            )
        if base.filesystem.include_workdir != new.filesystem.include_workdir:
            raise InvalidArgument.single(
                f"{field}.filesystem.include_workdir",
                "filesystem include_workdir cannot be changed on a live sandbox",
            )
        for attr in ("read_only", "read_write"):
            gone = _missing(getattr(base.filesystem, attr), getattr(new.filesystem, attr))
            if gone:
                raise InvalidArgument.single(
                    f"{field}.filesystem.{attr}",
                    f"filesystem {attr} path {gone[0]!r} cannot be removed on a live sandbox",
                )
    for attr in ("landlock", "process"):
        if getattr(base, attr) != getattr(new, attr):
            raise InvalidArgument.single(
                f"{field}.{attr}", f"{attr} policy cannot be changed on a live sandbox"
            )


# --- revisions --------------------------------------------------------------------------------


def status_word(status: int) -> str:
    return STATUS_WORDS.get(status, "pending")


def revision_status(stored: StoredPolicyRevision) -> str:
    """The status column of a stored revision (``update_message_cas(..., status=...)``)."""
    return status_word(stored.revision.status)


def new_revision(
    *,
    revision_id: str,
    sandbox_id: str,
    workspace: str,
    version: int,
    policy: SandboxPolicy,
    digest: str,
    now_ms: int,
    status: int = PENDING,
) -> StoredPolicyRevision:
    """The row of revision ``version`` of ``sandbox_id`` (status pending unless told)."""
    stored = StoredPolicyRevision(sandbox_id=sandbox_id)
    stored.metadata.id = revision_id
    stored.metadata.workspace = workspace
    revision = stored.revision
    revision.version = version
    revision.policy_hash = digest
    revision.status = status  # type: ignore[assignment]
    revision.policy.CopyFrom(policy)
    revision.created_time.FromMilliseconds(now_ms)
    if status == LOADED:
        revision.loaded_time.FromMilliseconds(now_ms)
    return stored


def policy_base(
    sandbox: openshell_pb2.Sandbox, latest: StoredPolicyRevision | None
) -> SandboxPolicy:
    """What a change applies to: the latest revision, else the sandbox's spec policy."""
    if latest is not None:
        return latest.revision.policy
    return sandbox.spec.policy if sandbox.spec.HasField("policy") else SandboxPolicy()


def any_revision(_latest: StoredPolicyRevision) -> bool:
    return True


def next_revision(
    latest: StoredPolicyRevision | None,
    policy: SandboxPolicy,
    *,
    scope: str,
    workspace: str,
    revision_id: str,
    now_ms: int,
    status: int = PENDING,
    reusable: Callable[[StoredPolicyRevision], bool] = any_revision,
) -> StoredPolicyRevision | None:
    """The revision that follows ``latest`` (None: there is none yet) and holds ``policy``.

    None when ``latest`` already holds that policy (same hash) and ``reusable`` says it can
    serve (a superseded global revision cannot): then nothing is to be written. The policy
    is validated before a revision is built, so nothing invalid is ever inserted.
    """
    digest = policy_hash(policy)
    if latest is not None and latest.revision.policy_hash == digest and reusable(latest):
        return None
    require_acceptable_policy(policy)
    return new_revision(
        revision_id=revision_id,
        sandbox_id=scope,
        workspace=workspace,
        version=(latest.revision.version if latest is not None else 0) + 1,
        policy=policy,
        digest=digest,
        now_ms=now_ms,
        status=status,
    )


def report_status(status: int, load_error: str, now_ms: int) -> ReportMutation:
    """The mutation ReportPolicyStatus applies; ``status`` must be LOADED or FAILED."""
    if status not in (LOADED, FAILED):
        raise InvalidArgument.single("status", "status must be LOADED or FAILED")
    return ReportMutation(status, load_error, now_ms)


class ReportMutation:
    """Record a sandbox's load result on its revision, checked against the current state.

    A revision already superseded is returned unchanged: the caller sees SUPERSEDED in the
    stored message and knows the report came too late.
    """

    def __init__(self, status: int, load_error: str, now_ms: int) -> None:
        self.status = status
        self.load_error = load_error
        self.now_ms = now_ms

    def __call__(self, stored: StoredPolicyRevision) -> StoredPolicyRevision:
        revision = stored.revision
        current = revision.status
        if current in (self.status, SUPERSEDED):
            return stored
        if current != PENDING:
            name = openshell_pb2.PolicyStatus.Name(current)
            raise FailedPrecondition(
                f"policy revision {revision.version} is already {status_word(current)}", name
            )
        revision.status = self.status  # type: ignore[assignment]
        if self.status == LOADED:
            revision.loaded_time.FromMilliseconds(self.now_ms)
        else:
            revision.load_error = self.load_error
        return stored


def supersede(stored: StoredPolicyRevision) -> StoredPolicyRevision:
    """Retire a pending or loaded revision; any other state stays as it is."""
    if stored.revision.status in (PENDING, LOADED):
        stored.revision.status = SUPERSEDED
    return stored


def raise_current_version(version: int) -> SandboxVersionMutation:
    return SandboxVersionMutation(version)


class SandboxVersionMutation:
    """Record on the sandbox that it runs policy ``version``; only ever moves forward, so a
    late report of an older load cannot roll ``current_policy_version`` back."""

    def __init__(self, version: int) -> None:
        self.version = version

    def __call__(self, sandbox: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        if sandbox.status.current_policy_version < self.version:
            sandbox.status.current_policy_version = self.version
        return sandbox


def backfill_policy(policy: SandboxPolicy) -> BackfillMutation:
    return BackfillMutation(policy)


class BackfillMutation:
    """UpdateConfig with a full sandbox policy, applied to the freshly read sandbox.

    No ``spec.policy`` yet: the policy becomes the baseline (the reference's backfill, which
    the supervisor does with the policy it found in the image). A baseline already there:
    the sandbox is unchanged and the candidate must keep its static fields.
    """

    def __init__(self, policy: SandboxPolicy) -> None:
        self.policy = policy
        self.backfilled = False

    def __call__(self, sandbox: openshell_pb2.Sandbox) -> openshell_pb2.Sandbox:
        self.backfilled = False
        if sandbox.spec.HasField("policy"):
            validate_static_fields(sandbox.spec.policy, self.policy)
            return sandbox
        sandbox.spec.policy.CopyFrom(self.policy)
        self.backfilled = True
        return sandbox
