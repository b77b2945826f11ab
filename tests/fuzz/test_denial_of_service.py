"""While hostile requests run, the gateway keeps answering: a Health call answers within 1 s.

The attacks are the ones that once held the event loop or the memory: the longest selector
a request can carry (quadratic parsing held the loop for 50 s), the largest selector the
parser accepts (it becomes SQL), requests of the receive limit's size, and Structs nested at
the decoder's limit. Each attack runs in several concurrent loops for the whole check.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc
import pytest

from shellgate.api import openshell_pb2
from shellgate.controller.limits import Limits
from shellgate.store.selectors import (
    MAX_REQUIREMENTS,
    MAX_SELECTOR_LENGTH,
    MAX_SET_VALUES,
    parse_selector,
)
from tests.fuzz.strategies import deep_struct
from tests.support.gateway import Running

P = openshell_pb2
HEALTH_TIMEOUT = 1.0
ATTACK_SECONDS = 3.0
ATTACKERS_PER_KIND = 3
RECEIVE_LIMIT = Limits().max_receive_message_bytes


def longest_selector() -> str:
    """A selector just under the receive limit (the gateway must refuse it by length)."""
    return " ," * ((RECEIVE_LIMIT - 1024) // 2)


def largest_accepted_selector() -> str:
    """As many requirements and values as the parser takes, padded towards its length bound."""
    others = [f"k{n}!=v" for n in range(MAX_REQUIREMENTS - 1)]
    width = (MAX_SELECTOR_LENGTH - len(",".join(others)) - 16) // (MAX_SET_VALUES - len(others))
    values = ",".join(f"{n:0{width - 1}d}" for n in range(MAX_SET_VALUES - len(others)))
    text = ",".join([f"k in ({values})", *others])
    assert len(parse_selector(text)) == MAX_REQUIREMENTS  # accepted, at every bound
    return text


def request_of_limit_size() -> P.CreateSandboxRequest:
    """A CreateSandbox as large as the receive limit allows (annotations far over their cap)."""
    request = P.CreateSandboxRequest(name="huge", spec=P.SandboxSpec())
    request.annotations["a"] = "x" * (RECEIVE_LIMIT - 1024)
    return request


def deeply_nested() -> P.CreateSandboxRequest:
    request = P.CreateSandboxRequest(name="deep", spec=P.SandboxSpec())
    request.spec.template.resources.CopyFrom(deep_struct(95))
    return request


def attacks(gw: Running) -> dict[str, Callable[[], Awaitable[object]]]:
    stub = gw.stub
    longest, accepted = longest_selector(), largest_accepted_selector()
    huge, deep = request_of_limit_size(), deeply_nested()
    over = P.ListSandboxesRequest(label_selector="k" * (RECEIVE_LIMIT + 1))
    return {
        "longest selector": lambda: stub.ListSandboxes(
            P.ListSandboxesRequest(label_selector=longest)
        ),
        "largest accepted selector": lambda: stub.ListSandboxes(
            P.ListSandboxesRequest(label_selector=accepted, page_size=1000)
        ),
        "request of the receive limit": lambda: stub.CreateSandbox(huge),
        "request over the receive limit": lambda: stub.ListSandboxes(over),
        "nested structs": lambda: stub.CreateSandbox(deep),
    }


async def attack(call: Callable[[], Awaitable[object]], until: float, codes: set[str]) -> int:
    made = 0
    while time.monotonic() < until:
        try:
            await call()
            codes.add("OK")
        except grpc.aio.AioRpcError as error:
            codes.add(error.code().name)
        made += 1
    return made


async def health_latencies(gw: Running, until: float) -> list[float]:
    latencies = []
    while time.monotonic() < until:
        started = time.perf_counter()
        answer = await gw.stub.Health(P.HealthRequest(), timeout=HEALTH_TIMEOUT)
        latencies.append(time.perf_counter() - started)
        assert answer.status == P.SERVICE_STATUS_HEALTHY
        await asyncio.sleep(0.05)
    return latencies


async def test_health_answers_within_a_second_during_hostile_requests(gw: Running) -> None:
    await gw.stub.CreateSandbox(P.CreateSandboxRequest(name="victim", spec=P.SandboxSpec()))
    until = time.monotonic() + ATTACK_SECONDS
    codes: dict[str, set[str]] = {}
    attackers = []
    for kind, call in attacks(gw).items():
        codes[kind] = set()
        for _ in range(ATTACKERS_PER_KIND):
            attackers.append(asyncio.create_task(attack(call, until, codes[kind])))
    await asyncio.sleep(0.2)  # the attack is under way before the first Health call
    try:
        latencies = await health_latencies(gw, until)
    except grpc.aio.AioRpcError as error:
        pytest.fail(f"Health during the attack: {error.code().name} {error.details()}")
    made = await asyncio.gather(*attackers)
    assert len(latencies) >= 5 and max(latencies) < HEALTH_TIMEOUT
    assert sum(made) >= len(attackers), "the attack made no calls: the check measures nothing"
    assert codes["longest selector"] == {"INVALID_ARGUMENT"}
    assert codes["largest accepted selector"] == {"OK"}
    assert codes["request of the receive limit"] == {"INVALID_ARGUMENT"}
    assert codes["request over the receive limit"] == {"RESOURCE_EXHAUSTED"}
    assert codes["nested structs"] <= {"INVALID_ARGUMENT"}
