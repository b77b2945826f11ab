"""The endpoint ambiguity rule, table-tested: which endpoint pairs compete, and which metadata
they must agree on."""

from __future__ import annotations

import pytest

from shellgate.api import sandbox_pb2
from shellgate.reconcilers.ambiguity import (
    AMBIGUITY_MESSAGE,
    MAX_REPORTED,
    find_endpoint_ambiguities,
    hosts_overlap,
    paths_overlap,
    require_unambiguous_endpoints,
)
from shellgate.reconcilers.errors import FailedPrecondition

S = sandbox_pb2
SKIP = S.NETWORK_TLS_MODE_SKIP
ENFORCE = S.NETWORK_ENFORCEMENT_MODE_ENFORCE


def ep(host: str = "api.example.com", port: int = 443, **kw: object) -> S.NetworkEndpoint:
    return S.NetworkEndpoint(host=host, port=port, **kw)  # type: ignore[arg-type]


def two(a: S.NetworkEndpoint, b: S.NetworkEndpoint) -> S.SandboxPolicy:
    made = S.SandboxPolicy()
    made.network_policies["a"].endpoints.append(a)
    made.network_policies["b"].endpoints.append(b)
    return made


def conflicts(a: S.NetworkEndpoint, b: S.NetworkEndpoint) -> list[str]:
    return [
        c.split("=")[0] for found in find_endpoint_ambiguities(two(a, b)) for c in found.conflicts
    ]


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        # identical or merely different access rules: they add up, nothing to choose
        (ep(), ep(), []),
        (ep(access=S.NETWORK_ACCESS_PRESET_READ_ONLY), ep(), []),
        # connection metadata must agree whenever host and port can match together
        (ep(tls=SKIP), ep(), ["tls"]),
        (ep(protocol="tcp"), ep(), ["transparent_tcp_eligible"]),
        (ep(allowed_ips=["10.0.0.1"]), ep(allowed_ips=["10.0.0.2"]), ["allowed_ips"]),
        (ep(allowed_ips=["10.0.0.1 "]), ep(allowed_ips=["10.0.0.1"]), []),
        (ep(advisor_proposed=True), ep(), ["advisor_proposed"]),
        # no overlap: different ports, disjoint hosts
        (ep(tls=SKIP, port=443), ep(port=8443), []),
        (ep(tls=SKIP, ports=[80, 443]), ep(ports=[443]), ["tls"]),
        (ep("a.example.com", tls=SKIP), ep("b.example.com"), []),
        (ep("*.example.com", tls=SKIP), ep("api.example.com"), ["tls"]),
        (ep("*.example.com", tls=SKIP), ep("a.b.example.com"), []),  # * stays in one label
        (ep("**.example.com", tls=SKIP), ep("a.b.example.com"), ["tls"]),
        (ep("", tls=SKIP), ep("anything.io"), ["tls"]),  # no host: any host
        # request pipeline: only between endpoints that take part in it
        (ep(protocol="rest"), ep(), []),  # the plain layer-4 one never competes
        (ep(protocol="rest"), ep(protocol="graphql"), ["protocol"]),
        (
            ep(protocol="rest", allowed_ips=["1.2.3.4"]),
            ep(protocol="graphql", allowed_ips=["1.2.3.4"]),
            ["protocol"],
        ),
        (
            ep(protocol="rest", tls=SKIP, enforcement=ENFORCE),
            ep(protocol="rest", tls=SKIP),
            ["enforcement"],
        ),
        (
            ep(protocol="rest", tls=SKIP, path="/v1/*"),
            ep(protocol="graphql", tls=SKIP, path="/v2/*"),
            [],
        ),  # disjoint paths
        (
            ep(protocol="rest", tls=SKIP, path="/v1/*"),
            ep(protocol="graphql", tls=SKIP, path="/v1/items"),
            [],
        ),  # the more specific path wins at run time
        (
            ep(protocol="rest", tls=SKIP, path="/v1/a*"),
            ep(protocol="graphql", tls=SKIP, path="/v1/*b"),
            ["protocol"],
        ),  # equally specific and overlapping
        (
            ep(protocol="graphql", tls=SKIP, graphql_max_body_bytes=65536),
            ep(protocol="graphql", tls=SKIP),
            [],
        ),  # 0 means the default limit
        (
            ep(protocol="mcp", tls=SKIP, json_rpc_max_body_bytes=10),
            ep(protocol="mcp", tls=SKIP),
            ["json_rpc_max_body_bytes"],
        ),
        (
            ep(protocol="mcp", tls=SKIP, mcp=S.McpOptions(strict_tool_names=False)),
            ep(protocol="mcp", tls=SKIP),
            ["mcp.strict_tool_names"],
        ),
        (
            ep(protocol="rest", tls=SKIP, credential_signing="sigv4"),
            ep(protocol="rest", tls=SKIP),
            ["credential_signing"],
        ),
    ],
)
def test_which_pairs_conflict(
    left: S.NetworkEndpoint, right: S.NetworkEndpoint, expected: list[str]
) -> None:
    assert conflicts(left, right) == expected


def test_endpoints_of_one_rule_are_compared_too() -> None:
    made = S.SandboxPolicy()
    made.network_policies["only"].endpoints.extend([ep(tls=SKIP), ep()])
    assert len(find_endpoint_ambiguities(made)) == 1


@pytest.mark.parametrize(
    ("left", "right", "overlap"),
    [
        ("a.com", "A.COM", True),
        ("*.a.com", "x.a.com", True),
        ("*.a.com", "a.com", False),
        ("x*.a.com", "*y.a.com", True),
        ("x*.a.com", "y*.a.com", False),
    ],
)
def test_host_globs(left: str, right: str, overlap: bool) -> None:
    assert hosts_overlap(left, right) is overlap


@pytest.mark.parametrize(
    ("left", "right", "overlap"),
    [
        ("/v1/**/x", "/v1/x", True),  # "**/" also matches nothing
        ("/v1/**", "/v1", False),
        ("/v1/*", "/v1/a/b", True),  # * crosses "/" in path globs
        ("/v[12]/x", "/v2/x", True),
        ("/v[!12]/x", "/v2/x", False),
        ("/a?c", "/abc", True),
        ("/a?c", "/ab", False),
        ("/a***", "/b", True),  # an invalid glob: conservative
    ],
)
def test_path_globs(left: str, right: str, overlap: bool) -> None:
    assert paths_overlap(left, right) is overlap


def test_the_refusal_names_the_pair_and_is_bounded() -> None:
    with pytest.raises(FailedPrecondition) as caught:
        require_unambiguous_endpoints(two(ep(tls=SKIP), ep()))
    assert str(caught.value) == (
        f"{AMBIGUITY_MESSAGE}:\nnetwork policies 'a' endpoint[0] (api.example.com:443) and 'b' "
        "endpoint[0] (api.example.com:443) overlap on port(s) 443 with conflicting metadata: "
        "tls='skip' vs 'auto'"
    )
    many = S.SandboxPolicy()
    many.network_policies["r"].endpoints.extend([ep(tls=SKIP)] * 5 + [ep()] * 5)
    with pytest.raises(FailedPrecondition) as caught:
        require_unambiguous_endpoints(many)
    lines = str(caught.value).splitlines()
    assert len(lines) == MAX_REPORTED + 2 and lines[-1] == f"... and {25 - MAX_REPORTED} more"
