"""A seeded fuzz run over every RPC the servicer serves, through a real gateway on a socket.

Each hypothesis example is a short program of calls: requests generated from the protobuf
descriptors with hostile values (tests/fuzz/strategies.py), requests that pass validation
(so later calls meet real objects) and raw frames that do not decode. tests/fuzz/harness.py
checks every answer and every row; failures are collected and reported together with the
seed, so ``SHELLGATE_FUZZ_SEED=<seed>`` replays the same run.

``make test`` runs a small budget (SQLite, and a smaller one on Postgres); ``make fuzz`` sets
``SHELLGATE_FUZZ_EXAMPLES`` for the nightly run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.message import EncodeError, Message
from google.protobuf.message import Error as ProtobufError
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from shellgate.api import openshell_pb2
from shellgate.store import connect
from tests.fuzz.harness import SERVED, SERVICE, UNSERVED, Fuzzer, request_class, row_states
from tests.fuzz.strategies import Messages, first_valid_requests, valid_requests
from tests.support.fake_driver import FakeDriver
from tests.support.gateway import Running, running_gateway

P = openshell_pb2
SEED = int(os.environ.get("SHELLGATE_FUZZ_SEED", "20251107"))
EXAMPLES = int(os.environ.get("SHELLGATE_FUZZ_EXAMPLES", "0"))
BUDGET = {"sqlite": 250, "postgres": 80}
"""Examples per backend in ``make test`` (each example is up to ``MAX_CALLS`` calls)."""
MAX_CALLS = 6


# ----- programs of calls --------------------------------------------------------------------


def raw_frames(method: str) -> st.SearchStrategy[bytes]:
    """Bytes that do not decode as the method's request, or decode to something odd."""
    strings = [
        f.number
        for f in SERVICE.methods_by_name[method].input_type.fields
        if f.type == f.TYPE_STRING
    ]
    invalid_utf8 = [bytes([(n << 3) | 2, 2]) + b"\xff\xfe" for n in strings if n < 16]
    return st.one_of(
        st.binary(max_size=64),
        st.sampled_from([b"\x08\xff", b"\x0a\x80", b"\x0a\x10\x00", b"\xff" * 8, b"\x00"]),
        st.sampled_from(invalid_utf8 or [b"\x0a\x02\xff\xfe"]),
    )


def calls(messages: Messages) -> st.SearchStrategy[tuple[str, Any, bool]]:
    """(method, request or bytes, is_raw): generated, valid, or raw."""
    generated = st.sampled_from(SERVED).flatmap(
        lambda m: messages.of(SERVICE.methods_by_name[m].input_type).map(lambda r: (m, r, False))
    )
    valid = st.one_of(
        *[strategy.map(lambda r, m=m: (m, r, False)) for m, strategy in valid_requests().items()]
    )
    mutated = st.one_of(
        *[
            st.tuples(strategy, messages.of(SERVICE.methods_by_name[m].input_type)).map(
                lambda pair, m=m: (m, merged(*pair), False)
            )
            for m, strategy in valid_requests().items()
        ]
    )
    raw = st.sampled_from(SERVED).flatmap(lambda m: raw_frames(m).map(lambda b: (m, b, True)))
    return st.one_of(generated, generated, valid, mutated, raw)


def merged(base: Message, extra: Message) -> Message:
    """A valid request with hostile fields merged in: it gets past the first checks."""
    result = type(base)()
    result.CopyFrom(base)
    try:
        result.MergeFrom(extra)
    except ProtobufError:  # nested past what protobuf itself will copy
        return base
    return result


async def sweep(fuzzer: Fuzzer) -> None:
    """Every served RPC at least once (empty, then valid where we have one, then raw bytes),
    and every unserved one answers UNIMPLEMENTED, whatever the examples go on to draw."""
    valid = first_valid_requests()
    for method in SERVED:
        await fuzzer.call(method, request_class(method)())
        if method in valid:
            await fuzzer.call(method, valid[method])
        await fuzzer.call_raw(method, b"\x0a\x02\xff\xfe")
    for method in UNSERVED:
        answer = await fuzzer.call_raw(method, b"")
        assert answer.code is grpc.StatusCode.UNIMPLEMENTED, (method, answer)


# ----- the run ------------------------------------------------------------------------------


@contextlib.contextmanager
def gateway_on_own_loop(store_url: str) -> Iterator[tuple[asyncio.AbstractEventLoop, Running]]:
    """The gateway lives on a loop the (synchronous) hypothesis examples drive directly."""
    loop = asyncio.new_event_loop()
    stack = contextlib.AsyncExitStack()
    store = loop.run_until_complete(connect(store_url))
    try:
        gw = loop.run_until_complete(
            stack.enter_async_context(running_gateway(store, FakeDriver()))
        )
        yield loop, gw
    finally:
        loop.run_until_complete(stack.aclose())
        loop.run_until_complete(store.close())
        loop.close()


async def play(fuzzer: Fuzzer, program: list[tuple[str, Any, bool]]) -> None:
    for method, request, is_raw in program:
        if is_raw:
            await fuzzer.call_raw(method, request)
            continue
        try:
            request.SerializeToString()
        except (EncodeError, RecursionError, ValueError):
            continue  # the client itself refuses to encode it: nothing reaches the gateway
        await fuzzer.call(method, request)


def run_fuzz(store_url: str, backend: str) -> Fuzzer:
    examples = EXAMPLES or BUDGET[backend]
    print(f"fuzz: seed={SEED} examples={examples} backend={backend}")
    with gateway_on_own_loop(store_url) as (loop, gw):
        fuzzer = Fuzzer(gw, gw.gateway.store, SEED)
        fuzzer.rows = loop.run_until_complete(row_states(fuzzer.store))
        loop.run_until_complete(sweep(fuzzer))
        messages = Messages(lambda: fuzzer.tokens)

        @seed(SEED)
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(st.lists(calls(messages), min_size=1, max_size=MAX_CALLS))
        def example(program: list[tuple[str, Any, bool]]) -> None:
            loop.run_until_complete(play(fuzzer, program))

        example()
        loop.run_until_complete(fuzzer.check_final_rows())
    return fuzzer


def report(fuzzer: Fuzzer) -> str:
    lines = [f"seed={fuzzer.seed}; replay with SHELLGATE_FUZZ_SEED={fuzzer.seed}"]
    lines += fuzzer.failures[:30]
    return "\n".join(lines)


def test_hostile_requests_to_every_served_rpc(
    store_url: str, request: pytest.FixtureRequest
) -> None:
    backend = request.node.callspec.params["store_url"]
    started = time.perf_counter()
    fuzzer = run_fuzz(store_url, backend)
    calls_made = sum(fuzzer.codes.values())
    print(f"fuzz: {calls_made} calls in {time.perf_counter() - started:.1f}s")
    for (method, code), count in sorted(fuzzer.codes.items()):
        print(f"  {method:24} {code:20} {count}")
    assert not fuzzer.failures, report(fuzzer)
    called = {method for method, _ in fuzzer.codes}
    assert called >= set(SERVED), f"never called: {set(SERVED) - called}"
    assert any(code == "OK" for _, code in fuzzer.codes), "no call succeeded: the run tests nothing"
