"""Validation at create as the reference does it, through a real gRPC socket on SQLite and
Postgres: CreateSandbox refuses the policies UpdateConfig refuses (exact codes and messages,
nothing stored), UpdateConfig reports a change to a field fixed at start before an unsafe
policy, and a sandbox created without a name gets an ``adjective-noun`` name."""

from __future__ import annotations

import re
from collections.abc import Sequence

import grpc
import pytest

from shellgate.api import openshell_pb2, sandbox_pb2
from shellgate.controller.service import names
from tests.config.helpers import create_sandbox, failure, policy, rule
from tests.gateway.conftest import Running

P = openshell_pb2
S = sandbox_pb2
AMBIGUOUS = (
    "network endpoint ambiguity validation failed:\nnetwork policies 'a' endpoint[0] "
    "(api.example.com:443) and 'b' endpoint[0] (api.example.com:443) overlap on port(s) 443 "
    "with conflicting metadata: tls='skip' vs 'auto'"
)


def root() -> S.SandboxPolicy:
    made = policy()
    made.process.run_as_user = "root"
    return made


def traversal() -> S.SandboxPolicy:
    made = policy()
    made.filesystem.read_only.append("/usr/../etc/shadow")
    return made


def broad() -> S.SandboxPolicy:
    made = policy()
    made.filesystem.read_write.append("/")
    return made


def ambiguous() -> S.SandboxPolicy:
    skip = rule("api.example.com")
    skip.endpoints[0].tls = S.NETWORK_TLS_MODE_SKIP
    return policy(a=skip, b=rule("api.example.com"))


CASES = [
    (
        root,
        grpc.StatusCode.INVALID_ARGUMENT,
        "spec.policy.process.run_as_user cannot be 'root': root is not allowed",
    ),
    (
        traversal,
        grpc.StatusCode.INVALID_ARGUMENT,
        "spec.policy.filesystem.read_only path '/usr/../etc/shadow' contains a '..' traversal "
        "component",
    ),
    (
        broad,
        grpc.StatusCode.INVALID_ARGUMENT,
        "spec.policy.filesystem.read_write path '/' is overly broad",
    ),
    (
        lambda: policy(bad=rule("*.com")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "spec.policy.network_policies.endpoints[0].host '*.com' is a TLD wildcard: too broad",
    ),
    (ambiguous, grpc.StatusCode.FAILED_PRECONDITION, AMBIGUOUS),
]


@pytest.mark.parametrize(("make", "code", "message"), CASES)
async def test_create_refuses_what_update_config_refuses(
    gw: Running, make: object, code: grpc.StatusCode, message: str
) -> None:
    bad = make()  # type: ignore[operator]
    spec = P.SandboxSpec(policy=bad)
    error = await failure(gw.stub.CreateSandbox(P.CreateSandboxRequest(name="alpha", spec=spec)))
    assert (error.code(), error.details()) == (code, message)
    assert list((await gw.stub.ListSandboxes(P.ListSandboxesRequest())).sandboxes) == []
    assert gw.driver.calls == []


@pytest.mark.parametrize(("make", "code", "message"), CASES)
async def test_update_config_refuses_the_same_policies(
    gw: Running, make: object, code: grpc.StatusCode, message: str
) -> None:
    await create_sandbox(gw, "alpha")
    request = P.UpdateConfigRequest(sandbox="alpha", policy=make())  # type: ignore[operator]
    error = await failure(gw.stub.UpdateConfig(request))
    assert (error.code(), error.details()) == (code, message.removeprefix("spec."))
    found = await gw.gateway.store.get_message_by_name(P.Sandbox, "alpha")
    assert found is not None and not found.spec.HasField("policy")


async def test_ambiguous_global_policy_is_refused(gw: Running) -> None:
    request = P.UpdateConfigRequest(policy=ambiguous(), **{"global": True})
    error = await failure(gw.stub.UpdateConfig(request))
    assert (error.code(), error.details()) == (grpc.StatusCode.FAILED_PRECONDITION, AMBIGUOUS)
    assert await gw.gateway.repos.settings.load_gateway() is None


async def test_ambiguous_merge_is_refused(gw: Running) -> None:
    await create_sandbox(gw, "alpha", policy(b=rule("api.example.com")))
    skip = rule("*.example.com")
    skip.endpoints[0].tls = S.NETWORK_TLS_MODE_SKIP
    op = P.PolicyMergeOperation()
    op.add_rule.rule_name = "a"
    op.add_rule.rule.CopyFrom(skip)
    request = P.UpdateConfigRequest(sandbox="alpha", merge_operations=[op])
    error = await failure(gw.stub.UpdateConfig(request))
    expected = AMBIGUOUS.replace("(api.example.com:443) and", "(*.example.com:443) and")
    assert (error.code(), error.details()) == (grpc.StatusCode.FAILED_PRECONDITION, expected)


async def test_update_reports_the_immutable_field_before_the_unsafe_policy(gw: Running) -> None:
    await create_sandbox(gw, "alpha", policy())
    both = root()  # process changed (fixed at start) *and* root (unsafe)
    error = await failure(gw.stub.UpdateConfig(P.UpdateConfigRequest(sandbox="alpha", policy=both)))
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "process policy cannot be changed on a live sandbox",
    )
    removed_and_ambiguous = ambiguous()
    del removed_and_ambiguous.filesystem.read_only[:]
    error = await failure(
        gw.stub.UpdateConfig(P.UpdateConfigRequest(sandbox="alpha", policy=removed_and_ambiguous))
    )
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "filesystem read_only path '/usr' cannot be removed on a live sandbox",
    )


GENERATED = re.compile(r"^[a-z]+-[a-z]+$")
SUFFIXED = re.compile(r"^[a-z]+-[a-z]+-[a-z0-9]{4}$")


async def create_unnamed(gw: Running) -> str:
    response = await gw.stub.CreateSandbox(P.CreateSandboxRequest(spec=P.SandboxSpec()))
    return response.sandbox.metadata.name


async def test_an_unnamed_sandbox_gets_an_adjective_noun_name(gw: Running) -> None:
    name = await create_unnamed(gw)
    assert GENERATED.match(name), name
    adjective, noun = name.split("-")
    assert adjective in names.ADJECTIVES and noun in names.NOUNS
    assert len(name) <= names.MAX_GENERATED_NAME_LEN


async def test_a_taken_generated_name_gets_a_suffix(
    gw: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    def always_first(words: Sequence[str]) -> str:
        return words[0]

    monkeypatch.setattr(names.readable_name, "__defaults__", (always_first,))
    first = await create_unnamed(gw)
    second = await create_unnamed(gw)
    third = await create_unnamed(gw)
    assert first == f"{names.ADJECTIVES[0]}-{names.NOUNS[0]}"
    for later in (second, third):
        assert SUFFIXED.match(later) and later.startswith(first + "-"), later
    assert len({first, second, third}) == 3
    assert all(len(n) <= names.MAX_GENERATED_NAME_LEN for n in (first, second, third))


async def test_a_taken_chosen_name_is_still_already_exists(gw: Running) -> None:
    await gw.stub.CreateSandbox(P.CreateSandboxRequest(name="brave-otter", spec=P.SandboxSpec()))
    error = await failure(
        gw.stub.CreateSandbox(P.CreateSandboxRequest(name="brave-otter", spec=P.SandboxSpec()))
    )
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS


def test_every_generated_name_fits_the_routing_limit() -> None:
    longest = max(map(len, names.ADJECTIVES)) + 1 + max(map(len, names.NOUNS))
    assert longest + 1 + names.SUFFIX_LEN <= names.MAX_GENERATED_NAME_LEN
    assert len(set(names.ADJECTIVES)) == len(names.ADJECTIVES)
    assert len(set(names.NOUNS)) == len(names.NOUNS)
    assert all(w.isalpha() and w.islower() for w in names.ADJECTIVES + names.NOUNS)
