"""Policy merge operations (UpdateConfig.merge_operations and draft-chunk approvals).

``apply_merge_operations`` turns a policy and a list of operations into a candidate policy;
it is pure, so the revision insert loop can re-run it against whatever revision is latest on
each attempt. The property that makes approvals crash-safe is **idempotence**: applying the
same operations to their own result changes nothing (``merge(merge(p)) == merge(p)``). Each
merge therefore only appends what is missing (binaries, endpoints, ports, L7 rules, IPs) and
never rewrites what is already there, and "is this rule already in the policy?" is simply
"does merging it change the policy?".

Errors: a malformed operation is INVALID_ARGUMENT; an operation whose target is not in the
current policy (an endpoint to add L7 rules to) is FAILED_PRECONDITION, since it may succeed
against another revision.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableSequence, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from shellgate.api import openshell_pb2, sandbox_pb2
from shellgate.reconcilers.errors import FailedPrecondition, InvalidArgument
from shellgate.reconcilers.policy import validate_rule

SandboxPolicy = sandbox_pb2.SandboxPolicy
NetworkPolicyRule = sandbox_pb2.NetworkPolicyRule
NetworkEndpoint = sandbox_pb2.NetworkEndpoint
MergeOperation = openshell_pb2.PolicyMergeOperation
T = TypeVar("T")

MAX_MERGE_OPERATIONS = 64
"""Operations in one UpdateConfig request."""


@dataclass(frozen=True)
class Addition:
    """What one add_rule actually added to the policy (what undoing it has to take out).

    Only grants are tracked: binaries and host:port pairs. A rule the policy already
    covered adds nothing (``adds_nothing``); protocol, path, L7 rules and allowed IPs merged
    into an existing endpoint are not tracked (docs/config.md, known limits).
    """

    rule_name: str
    created_rule: bool = False
    binaries: tuple[str, ...] = ()
    ports: tuple[tuple[str, int], ...] = ()

    @property
    def adds_nothing(self) -> bool:
        return not self.created_rule and not self.binaries and not self.ports


@dataclass
class MergeResult:
    """The candidate policy, and the rule each add_rule landed in and what it added there
    (both by operation index)."""

    policy: SandboxPolicy
    landed: dict[int, str] = field(default_factory=dict)
    added: dict[int, Addition] = field(default_factory=dict)


def apply_merge_operations(
    policy: SandboxPolicy, operations: Sequence[MergeOperation]
) -> MergeResult:
    """Apply ``operations`` in order to a copy of ``policy``; ``policy`` is not modified."""
    if len(operations) > MAX_MERGE_OPERATIONS:
        raise InvalidArgument.single(
            "merge_operations",
            f"merge_operations exceeds maximum entries of {MAX_MERGE_OPERATIONS} "
            f"(got {len(operations)})",
        )
    merged = SandboxPolicy()
    merged.CopyFrom(policy)
    result = MergeResult(merged)
    for index, operation in enumerate(operations):
        addition = _apply(merged, operation, f"merge_operations[{index}]")
        if addition is not None:
            result.landed[index] = addition.rule_name
            result.added[index] = addition
    return result


def _apply(policy: SandboxPolicy, operation: MergeOperation, field: str) -> Addition | None:
    kind = operation.WhichOneof("operation")
    if kind == "add_rule":
        return add_rule(policy, operation.add_rule.rule_name, operation.add_rule.rule, field)
    if kind == "remove_endpoint":
        op = operation.remove_endpoint
        _remove_endpoint(policy, op.rule_name, op.host, op.port, field)
    elif kind == "remove_rule":
        _require(operation.remove_rule.rule_name, f"{field}.remove_rule.rule_name")
        policy.network_policies.pop(operation.remove_rule.rule_name, None)
    elif kind == "add_deny_rules":
        _add_l7(policy, operation.add_deny_rules.target, operation.add_deny_rules.deny_rules, field)
    elif kind == "add_allow_rules":
        _add_l7(policy, operation.add_allow_rules.target, operation.add_allow_rules.rules, field)
    elif kind == "remove_binary":
        op_rb = operation.remove_binary
        _remove_binary(policy, op_rb.rule_name, op_rb.binary_path, field)
    else:
        raise InvalidArgument.single(field, f"{field} names no operation")
    return None


def _require(value: str, field: str) -> None:
    if not value.strip():
        raise InvalidArgument.single(field, f"{field} is required")


# --- add_rule ---------------------------------------------------------------------------------


def ports_of(endpoint: NetworkEndpoint) -> list[int]:
    """An endpoint's ports: ``ports`` when set, else ``port`` (0 means none)."""
    return list(endpoint.ports) or ([endpoint.port] if endpoint.port else [])


def _overlap(left: NetworkEndpoint, right: NetworkEndpoint) -> bool:
    return (
        left.host.lower() == right.host.lower()
        and left.path == right.path
        and bool(set(ports_of(left)) & set(ports_of(right)))
    )


def _shares_endpoint(existing: NetworkPolicyRule, incoming: NetworkPolicyRule) -> bool:
    return any(_overlap(a, b) for a in existing.endpoints for b in incoming.endpoints)


def _append_missing(target: MutableSequence[T], incoming: Iterable[T]) -> None:
    for item in incoming:
        if item not in target:
            target.append(item)


def _merge_endpoint(existing: NetworkEndpoint, incoming: NetworkEndpoint) -> None:
    """Add what ``incoming`` has and ``existing`` lacks; never rewrite what is there."""
    ports = ports_of(existing)
    extra = [port for port in ports_of(incoming) if port not in ports]
    if extra:
        merged = sorted(set(ports + extra))
        existing.port = merged[0]
        del existing.ports[:]
        existing.ports.extend(merged)
    for attr in ("protocol", "path"):
        if not getattr(existing, attr) and getattr(incoming, attr):
            setattr(existing, attr, getattr(incoming, attr))
    _append_missing(existing.rules, incoming.rules)
    _append_missing(existing.deny_rules, incoming.deny_rules)
    _append_missing(existing.allowed_ips, incoming.allowed_ips)


def _merge_rule(existing: NetworkPolicyRule, incoming: NetworkPolicyRule) -> None:
    _append_missing(existing.binaries, incoming.binaries)
    for endpoint in incoming.endpoints:
        match = next((e for e in existing.endpoints if _overlap(e, endpoint)), None)
        if match is None:
            existing.endpoints.append(endpoint)
        else:
            _merge_endpoint(match, endpoint)


def _landing_rule(policy: SandboxPolicy, rule_name: str, incoming: NetworkPolicyRule) -> str:
    """The rule ``incoming`` merges into: its own name, else one sharing an endpoint."""
    if rule_name in policy.network_policies:
        return rule_name
    for key in sorted(policy.network_policies):
        if _shares_endpoint(policy.network_policies[key], incoming):
            return key
    return rule_name


def _endpoint_covers(existing: NetworkEndpoint, incoming: NetworkEndpoint) -> bool:
    """Merging ``incoming`` into ``existing`` would change nothing."""
    return (
        existing.host.lower() == incoming.host.lower()
        and existing.path == incoming.path
        and set(ports_of(incoming)) <= set(ports_of(existing))
        and bool(existing.protocol or not incoming.protocol)
        and all(r in existing.rules for r in incoming.rules)
        and all(r in existing.deny_rules for r in incoming.deny_rules)
        and set(incoming.allowed_ips) <= set(existing.allowed_ips)
    )


def _rule_covers(existing: NetworkPolicyRule, incoming: NetworkPolicyRule) -> bool:
    return all(b in existing.binaries for b in incoming.binaries) and all(
        any(_endpoint_covers(e, endpoint) for e in existing.endpoints)
        for endpoint in incoming.endpoints
    )


def covering_rule(policy: SandboxPolicy, incoming: NetworkPolicyRule) -> str | None:
    """The first rule (by name) that already grants everything ``incoming`` asks for.

    This is what makes adding idempotent even inside a sequence of operations: once a rule's
    grants are in the policy, adding it again is a no-op wherever it landed, although a later
    operation may have changed which rule it would land in now.
    """
    for key in sorted(policy.network_policies):
        if _rule_covers(policy.network_policies[key], incoming):
            return key
    return None


def _grants(rule: NetworkPolicyRule | None) -> tuple[list[str], list[tuple[str, int]]]:
    """A rule's binary paths and host:port pairs (hosts lowercased), in order."""
    if rule is None:
        return [], []
    pairs = [(e.host.lower(), port) for e in rule.endpoints for port in ports_of(e)]
    return [b.path for b in rule.binaries], list(dict.fromkeys(pairs))


def add_rule(
    policy: SandboxPolicy, rule_name: str, rule: NetworkPolicyRule, field: str
) -> Addition:
    """Merge ``rule`` into ``policy`` in place; returns the rule it landed in and what it
    added there.

    Already granted by some rule: nothing changes. Otherwise a rule of that name, or else the
    first rule (by name) sharing an endpoint with it, absorbs the new binaries, endpoints and
    L7 rules; failing both, the rule is added under ``rule_name``, its overlapping endpoints
    folded together.
    """
    _require(rule_name, f"{field}.add_rule.rule_name")
    violations = validate_rule(rule, f"{field}.add_rule.rule")
    if violations:
        raise InvalidArgument(violations)
    covered = covering_rule(policy, rule)
    if covered is not None:
        return Addition(covered)
    landing = _landing_rule(policy, rule_name, rule)
    created = landing not in policy.network_policies
    old_binaries, old_ports = _grants(policy.network_policies.get(landing))
    if created:
        policy.network_policies[landing].name = rule.name or rule_name
    _merge_rule(policy.network_policies[landing], rule)
    new_binaries, new_ports = _grants(policy.network_policies[landing])
    return Addition(
        landing,
        created,
        tuple(b for b in new_binaries if b not in old_binaries),
        tuple(p for p in new_ports if p not in old_ports),
    )


# --- removals ---------------------------------------------------------------------------------


def _remove_endpoint(
    policy: SandboxPolicy, rule_name: str, host: str, port: int, field: str
) -> None:
    """Remove ``host:port`` from one rule (or every rule); a rule left empty goes too."""
    _require(host, f"{field}.remove_endpoint.host")
    names = [rule_name] if rule_name else sorted(policy.network_policies)
    for name in names:
        if name not in policy.network_policies:
            continue
        rule = policy.network_policies[name]
        kept = [e for e in rule.endpoints if not _narrow(e, host, port)]
        if len(kept) != len(rule.endpoints):
            del rule.endpoints[:]
            rule.endpoints.extend(kept)
        if not rule.endpoints:
            del policy.network_policies[name]


def _narrow(endpoint: NetworkEndpoint, host: str, port: int) -> bool:
    """Drop ``port`` from a matching endpoint; True when nothing of the endpoint is left."""
    if endpoint.host.lower() != host.lower():
        return False
    ports = ports_of(endpoint)
    if port == 0 or ports == [port]:
        return True
    if port in ports and endpoint.ports:
        remaining = [p for p in ports if p != port]
        del endpoint.ports[:]
        endpoint.ports.extend(remaining)
        endpoint.port = remaining[0]
    return False


def _remove_binary(policy: SandboxPolicy, rule_name: str, binary_path: str, field: str) -> None:
    """Remove a binary from a rule; a rule whose last binary went is removed too."""
    _require(rule_name, f"{field}.remove_binary.rule_name")
    _require(binary_path, f"{field}.remove_binary.binary_path")
    if rule_name not in policy.network_policies:
        return
    rule = policy.network_policies[rule_name]
    kept = [b for b in rule.binaries if b.path != binary_path]
    if len(kept) == len(rule.binaries):
        return
    del rule.binaries[:]
    rule.binaries.extend(kept)
    if not kept:
        del policy.network_policies[rule_name]


# --- L7 rules ---------------------------------------------------------------------------------


def _targets(policy: SandboxPolicy, target: openshell_pb2.L7RuleTarget) -> list[NetworkEndpoint]:
    names = [target.rule_name] if target.rule_name else sorted(policy.network_policies)
    wanted = {b.path for b in target.binaries} if not target.any_binary else set()
    found = []
    for name in names:
        rule = policy.network_policies.get(name)
        if rule is None or not wanted <= {b.path for b in rule.binaries}:
            continue
        for endpoint in rule.endpoints:
            if endpoint.host.lower() != target.host.lower():
                continue
            if target.ports and not set(target.ports) & set(ports_of(endpoint)):
                continue
            if target.HasField("path") and endpoint.path != target.path:
                continue
            found.append(endpoint)
    return found


def _add_l7(
    policy: SandboxPolicy, target: openshell_pb2.L7RuleTarget, rules: Sequence[Any], field: str
) -> None:
    """Append missing L7 allow or deny rules to the one endpoint ``target`` names."""
    _require(target.host, f"{field}.target.host")
    if not rules:
        raise InvalidArgument.single(f"{field}.rules", f"{field} carries no L7 rules")
    matches = _targets(policy, target)
    shown = f"{target.host}:{','.join(map(str, target.ports)) or '*'}"
    if len(matches) != 1:
        found = "not found" if not matches else f"ambiguous ({len(matches)} endpoints match)"
        raise FailedPrecondition(f"endpoint {shown} is {found} in the current policy")
    endpoint = matches[0]
    if isinstance(rules[0], sandbox_pb2.L7DenyRule):
        if not endpoint.rules and not endpoint.access:
            raise FailedPrecondition(
                f"endpoint {shown} has no allow rules or access preset to deny from"
            )
        _append_missing(endpoint.deny_rules, rules)
    else:
        _append_missing(endpoint.rules, rules)


# --- building operations ----------------------------------------------------------------------


def add_rule_operation(rule_name: str, rule: NetworkPolicyRule) -> MergeOperation:
    operation = MergeOperation()
    operation.add_rule.rule_name = rule_name
    operation.add_rule.rule.CopyFrom(rule)
    return operation


def _remove_binary_op(rule_name: str, path: str) -> MergeOperation:
    operation = MergeOperation()
    operation.remove_binary.rule_name = rule_name
    operation.remove_binary.binary_path = path
    return operation


def _remove_endpoint_op(rule_name: str, host: str, port: int) -> MergeOperation:
    operation = MergeOperation()
    operation.remove_endpoint.rule_name = rule_name
    operation.remove_endpoint.host = host
    operation.remove_endpoint.port = port
    return operation


def undo_operations(addition: Addition) -> list[MergeOperation]:
    """What takes ``addition`` back out of the policy, and nothing else.

    A rule the addition created loses its binaries (and goes with the last one), or, without
    binaries, its endpoints, as ``removal_operations`` does. A rule that existed before
    loses only the binaries and host:port pairs the addition brought; a covered addition
    (nothing added) is undone by no operation at all.
    """
    name = addition.rule_name
    binaries = [_remove_binary_op(name, path) for path in addition.binaries]
    ports = [_remove_endpoint_op(name, host, port) for host, port in addition.ports]
    if addition.created_rule:
        return binaries or ports
    return binaries + ports


def removal_operations(rule_name: str, rule: NetworkPolicyRule) -> list[MergeOperation]:
    """What undoes ``add_rule(rule_name, rule)``: its binaries out of the rule it landed in
    (which goes once empty), or, for a rule without binaries, its endpoints."""
    operations = []
    for binary in rule.binaries:
        operation = MergeOperation()
        operation.remove_binary.rule_name = rule_name
        operation.remove_binary.binary_path = binary.path
        operations.append(operation)
    if operations:
        return operations
    for endpoint in rule.endpoints:
        for port in ports_of(endpoint):
            operation = MergeOperation()
            operation.remove_endpoint.rule_name = rule_name
            operation.remove_endpoint.host = endpoint.host
            operation.remove_endpoint.port = port
            operations.append(operation)
    return operations
