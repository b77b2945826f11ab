"""Network endpoint ambiguity: two endpoints that can match the same connection but disagree
on how it is made or parsed.

The sandbox proxy picks one endpoint's metadata for a connection (TLS handling, allowed IPs,
transparent TCP) and, for requests, one endpoint's request pipeline (protocol parser,
enforcement, credential rewriting, signing). Access rules from several endpoints may add up,
but that metadata must have one value: when two endpoints whose hosts and ports can match the
same destination disagree on it, which one applies would depend on iteration order. Such a
policy is refused before it is stored (FAILED_PRECONDITION, as the reference answers), so no
sandbox ever runs with behaviour chosen by accident.

Two endpoints compete when their port sets intersect and their host globs can match one name
(``*`` stays within one DNS label, ``**`` crosses labels; an empty host matches any host).
Their connection metadata must then agree. Their request-pipeline metadata must agree too
when both take part in request processing (a non-TCP protocol, allowed IPs, a TLS mode or a
credential binding), their path globs overlap, and neither path is more specific than the
other (the more specific path wins at run time, so there is no tie to break).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from shellgate.api import sandbox_pb2
from shellgate.reconcilers.errors import FailedPrecondition

Endpoint = sandbox_pb2.NetworkEndpoint
SandboxPolicy = sandbox_pb2.SandboxPolicy

AMBIGUITY_MESSAGE = "network endpoint ambiguity validation failed"
DEFAULT_BODY_LIMIT = 65_536
"""What an unset body limit (0) means to the proxy: two endpoints, one unset and one at this
value, agree."""
MAX_REPORTED = 8
"""Ambiguities listed in one answer; the message stays bounded whatever the policy's size."""

UNICODE = ((0, 0xD7FF), (0xE000, 0x10FFFF))


@dataclass(frozen=True)
class EndpointRef:
    policy: str
    index: int
    endpoint: Endpoint


@dataclass(frozen=True)
class Ambiguity:
    left: EndpointRef
    right: EndpointRef
    ports: tuple[int, ...]
    conflicts: tuple[str, ...]

    def describe(self) -> str:
        return (
            f"network policies {self.left.policy!r} endpoint[{self.left.index}] "
            f"({selector(self.left.endpoint)}) and {self.right.policy!r} "
            f"endpoint[{self.right.index}] ({selector(self.right.endpoint)}) overlap on "
            f"port(s) {','.join(map(str, self.ports))} with conflicting metadata: "
            + "; ".join(self.conflicts)
        )


def require_unambiguous_endpoints(policy: SandboxPolicy) -> None:
    """FAILED_PRECONDITION naming (up to ``MAX_REPORTED``) ambiguous endpoint pairs."""
    found = find_endpoint_ambiguities(policy)
    if found:
        lines = [a.describe() for a in found[:MAX_REPORTED]]
        if len(found) > MAX_REPORTED:
            lines.append(f"... and {len(found) - MAX_REPORTED} more")
        raise FailedPrecondition(AMBIGUITY_MESSAGE + ":\n" + "\n".join(lines))


def find_endpoint_ambiguities(policy: SandboxPolicy) -> list[Ambiguity]:
    endpoints = list(_endpoints(policy))
    found = []
    for i, left in enumerate(endpoints):
        for right in endpoints[i + 1 :]:
            ambiguity = _compare(left, right)
            if ambiguity is not None:
                found.append(ambiguity)
    return found


def _endpoints(policy: SandboxPolicy) -> Iterator[EndpointRef]:
    for key in sorted(policy.network_policies):
        rule = policy.network_policies[key]
        for index, endpoint in enumerate(rule.endpoints):
            yield EndpointRef(rule.name or key, index, endpoint)


def _compare(left: EndpointRef, right: EndpointRef) -> Ambiguity | None:
    a, b = left.endpoint, right.endpoint
    ports = tuple(sorted(effective_ports(a) & effective_ports(b)))
    if not ports or not hosts_overlap(a.host, b.host):
        return None
    conflicts = connection_conflicts(a, b)
    if (
        in_request_pipeline(a)
        and in_request_pipeline(b)
        and paths_overlap(a.path, b.path)
        and path_specificity(a.path) == path_specificity(b.path)
    ):
        conflicts += request_conflicts(a, b)
    return Ambiguity(left, right, ports, tuple(conflicts)) if conflicts else None


# --- selectors --------------------------------------------------------------------------------


def effective_ports(endpoint: Endpoint) -> set[int]:
    if endpoint.ports:
        return {p for p in endpoint.ports if p > 0}
    return {endpoint.port} if endpoint.port > 0 else set()


def selector(endpoint: Endpoint) -> str:
    host = endpoint.host or "<any-host>"
    ports = ",".join(map(str, sorted(effective_ports(endpoint))))
    return f"{host}:{ports}{endpoint.path}"


def is_tcp(protocol: str) -> bool:
    return protocol.lower() == "tcp"


def in_request_pipeline(endpoint: Endpoint) -> bool:
    """Plain layer-4 endpoints authorize a destination only; they never compete for the
    request pipeline of the one endpoint that configures it."""
    return (
        (bool(endpoint.protocol) and not is_tcp(endpoint.protocol))
        or bool(endpoint.allowed_ips)
        or endpoint.tls != sandbox_pb2.NETWORK_TLS_MODE_UNSPECIFIED
        or endpoint.HasField("credential_binding")
    )


def path_specificity(path: str) -> int:
    return len(path.replace("*", ""))


# --- conflicts --------------------------------------------------------------------------------

Normalize = Callable[[Endpoint], object]


def _differences(a: Endpoint, b: Endpoint, fields: list[tuple[str, Normalize]]) -> list[str]:
    out = []
    for name, value in fields:
        left, right = value(a), value(b)
        if left != right:
            out.append(f"{name}={left!r} vs {right!r}")
    return out


def _tls(e: Endpoint) -> str:
    return "skip" if e.tls == sandbox_pb2.NETWORK_TLS_MODE_SKIP else "auto"


def _enforcement(e: Endpoint) -> str:
    return "enforce" if e.enforcement == sandbox_pb2.NETWORK_ENFORCEMENT_MODE_ENFORCE else "audit"


def _allowed_ips(e: Endpoint) -> list[str]:
    return sorted({ip.strip().lower() for ip in e.allowed_ips})


def _body_limit(value: int) -> int:
    return value or DEFAULT_BODY_LIMIT


def _request_protocol(e: Endpoint) -> str:
    return "" if is_tcp(e.protocol) else e.protocol.lower()


def _strict_tool_names(e: Endpoint) -> bool:
    return e.mcp.strict_tool_names if e.mcp.HasField("strict_tool_names") else True


def _websocket_graphql(e: Endpoint) -> bool:
    allow = any(
        r.allow.operation_type or r.allow.operation_name or r.allow.fields
        for r in e.rules
        if r.HasField("allow")
    )
    deny = any(d.operation_type or d.operation_name or d.fields for d in e.deny_rules)
    persisted = bool(e.persisted_queries) and e.persisted_queries != "deny"
    return bool(e.graphql_persisted_queries) or persisted or allow or deny


def connection_conflicts(a: Endpoint, b: Endpoint) -> list[str]:
    return _differences(
        a,
        b,
        [
            ("transparent_tcp_eligible", lambda e: is_tcp(e.protocol)),
            ("tls", _tls),
            ("allowed_ips", _allowed_ips),
            ("advisor_proposed", lambda e: e.advisor_proposed),
        ],
    )


def request_conflicts(a: Endpoint, b: Endpoint) -> list[str]:
    fields: list[tuple[str, Normalize]] = [
        ("protocol", _request_protocol),
        ("enforcement", _enforcement),
        ("allow_encoded_slash", lambda e: e.allow_encoded_slash),
        ("websocket_credential_rewrite", lambda e: e.websocket_credential_rewrite),
        ("request_body_credential_rewrite", lambda e: e.request_body_credential_rewrite),
    ]
    both = {a.protocol.lower(), b.protocol.lower()}
    if both == {"websocket"}:
        fields.append(("websocket_graphql_policy", _websocket_graphql))
    fields += [
        ("credential_signing", lambda e: e.credential_signing),
        ("signing_service", lambda e: e.signing_service),
        ("signing_region", lambda e: e.signing_region),
        ("credential_binding.provider", lambda e: e.credential_binding.provider),
    ]
    if both == {"graphql"}:
        fields.append(("graphql_max_body_bytes", lambda e: _body_limit(e.graphql_max_body_bytes)))
    if len(both) == 1 and both <= {"json-rpc", "mcp"}:
        fields.append(("json_rpc_max_body_bytes", lambda e: _body_limit(e.json_rpc_max_body_bytes)))
    if both == {"mcp"}:
        fields.append(("mcp.strict_tool_names", _strict_tool_names))
    return _differences(a, b, fields)


# --- glob overlap -----------------------------------------------------------------------------
#
# Two globs overlap when some string matches both: a breadth-first search over pairs of
# positions in the two token lists (a star may consume nothing, or one character and stay).
# Each token is a set of character ranges; two tokens can advance together when their sets
# intersect.

Ranges = tuple[tuple[int, int], ...]
Token = tuple[str, Ranges]
"""("star", ranges) or ("one", ranges): a star repeats, anything else is one character."""


def hosts_overlap(left: str, right: str) -> bool:
    if not left or not right:
        return True
    return tokens_overlap(host_tokens(left.lower()), host_tokens(right.lower()))


def paths_overlap(left: str, right: str) -> bool:
    if not left or not right or left in ("**", "/**") or right in ("**", "/**"):
        return True
    a, b = path_tokens(left), path_tokens(right)
    if a is None or b is None:
        return True  # an invalid glob: ordinary validation refuses it; stay conservative
    return tokens_overlap(a, b)


def _complement(ranges: Ranges) -> Ranges:
    out: list[tuple[int, int]] = []
    for lo, hi in UNICODE:
        cursor = lo
        for start, end in sorted(ranges):
            if end < cursor or start > hi:
                continue
            if start > cursor:
                out.append((cursor, start - 1))
            cursor = max(cursor, end + 1)
        if cursor <= hi:
            out.append((cursor, hi))
    return tuple(out)


def _char(c: str) -> Ranges:
    return ((ord(c), ord(c)),)


def host_tokens(pattern: str) -> list[Token]:
    """``*`` is any run within a label (no ``.``), ``**`` any run at all."""
    tokens: list[Token] = []
    i = 0
    while i < len(pattern):
        if pattern[i] != "*":
            tokens.append(("one", _char(pattern[i])))
            i += 1
            continue
        start = i
        while i < len(pattern) and pattern[i] == "*":
            i += 1
        tokens.append(("star", UNICODE if i - start >= 2 else _complement(_char("."))))
    return tokens


def path_tokens(pattern: str) -> list[Token] | None:
    """Path globs as the proxy matches them: ``?`` one character, ``*`` and ``**`` any run
    (separators included), ``[...]`` / ``[!...]`` classes; None for an invalid glob."""
    tokens: list[Token] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "?":
            tokens.append(("one", UNICODE))
            i += 1
        elif c == "*":
            start = i
            while i < len(pattern) and pattern[i] == "*":
                i += 1
            count = i - start
            if count > 2:
                return None
            if count == 2:
                if not (start == 0 or pattern[start - 1] == "/"):
                    return None
                if not (i == len(pattern) or pattern[i] == "/"):
                    return None
                if i < len(pattern):
                    i += 1  # "**/" also matches nothing at all
            tokens.append(("star", UNICODE))
        elif c == "[":
            negated = pattern[i + 1 : i + 2] == "!"
            body_start = i + (2 if negated else 1)
            close = pattern.find("]", body_start)
            if close <= body_start:
                return None
            ranges = _class_ranges(pattern[body_start:close])
            tokens.append(("one", _complement(ranges) if negated else ranges))
            i = close + 1
        else:
            tokens.append(("one", _char(c)))
            i += 1
    return tokens


def _class_ranges(body: str) -> Ranges:
    out: list[tuple[int, int]] = []
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            if body[i] <= body[i + 2]:
                out.append((ord(body[i]), ord(body[i + 2])))
            i += 3
        else:
            out.append((ord(body[i]), ord(body[i])))
            i += 1
    return tuple(out)


def _share(a: Ranges, b: Ranges) -> bool:
    return any(lo1 <= hi2 and lo2 <= hi1 for lo1, hi1 in a for lo2, hi2 in b)


def tokens_overlap(left: list[Token], right: list[Token]) -> bool:
    queue = [(0, 0)]
    seen: set[tuple[int, int]] = set()
    while queue:
        i, j = queue.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == len(left) and j == len(right):
            return True
        if i < len(left) and left[i][0] == "star":
            queue.append((i + 1, j))
        if j < len(right) and right[j][0] == "star":
            queue.append((i, j + 1))
        if i < len(left) and j < len(right) and _share(left[i][1], right[j][1]):
            queue.append(
                (i if left[i][0] == "star" else i + 1, j if right[j][0] == "star" else j + 1)
            )
    return False
