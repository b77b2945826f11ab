"""A logged client load over several replicas, and the checks run on its history afterwards.

Each client is sequential and sends every call to the next replica in turn, so a fault on
one replica reaches every kind of call. Kinds of call:

- ``create``: CreateProvider of a fresh name;
- ``attach`` / ``detach``: one client per (sandbox, provider) pair alternates the two, so
  the order of that pair's calls is the client's own order;
- ``setting``: one client per sandbox writes ``dummy_int`` with increasing values;
- ``read`` / ``cas`` on one hot provider: GetProvider, then UpdateProvider with the read
  ``resource_version`` (one attempt, ABORTED on a stale version). Several clients race on
  it; the linearizability checker judges that history.

A call that answered UNAVAILABLE or ran out of time may still have taken effect, at any
moment after it was sent (a paused replica may finish it seconds later). The checks allow
exactly that and nothing more.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from shellgate.api import datamodel_pb2, openshell_pb2, openshell_pb2_grpc, sandbox_pb2
from tests.faults.support import Call, History, retry_info_of
from tests.support.linearizability import CasRegister, Operation, linearizable

P = openshell_pb2
Stub = openshell_pb2_grpc.OpenShellStub
DEADLINE_S = 3.0
PAUSE_S = 0.05
HOT = "hot"
SETTING = "dummy_int"
# Codes a call may answer under these faults. ABORTED is a lost race on a version (a cas,
# or an attach whose server-side retries ran out); INTERNAL and UNKNOWN are bugs.
EXPECTED_CODES = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED", "ABORTED"}
UNKNOWN_OUTCOME = {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


def provider(name: str, **config: str) -> datamodel_pb2.Provider:
    message = datamodel_pb2.Provider(type="github", credentials={"T": "x"}, config=config)
    message.metadata.name = name
    return message


@dataclass
class Workload:
    """What the load works on: created once per replica set by ``prepare``."""

    sandboxes: tuple[str, ...] = ("s0", "s1")
    providers_per_sandbox: int = 3
    hot_clients: int = 4
    created_names: itertools.count[int] = field(default_factory=itertools.count)

    def pairs(self) -> list[tuple[str, str]]:
        n = self.providers_per_sandbox
        return [(s, f"a{i * n + j}") for i, s in enumerate(self.sandboxes) for j in range(n)]

    async def prepare(self, stub: Stub, extra_sandboxes: tuple[str, ...] = ()) -> None:
        for name in (*self.sandboxes, *extra_sandboxes):
            await stub.CreateSandbox(P.CreateSandboxRequest(name=name, spec=P.SandboxSpec()))
        for _, name in self.pairs():
            await stub.CreateProvider(P.CreateProviderRequest(provider=provider(name)))
        await stub.CreateProvider(P.CreateProviderRequest(provider=provider(HOT, v="init")))

    async def hot_register(self, stub: Stub) -> CasRegister:
        """The hot provider as the checker's model starts from it (read with no load)."""
        reply = await stub.GetProvider(P.GetProviderRequest(name=HOT))
        return CasRegister(reply.provider.config["v"], reply.provider.metadata.resource_version)


async def _logged(
    history: History,
    op: str,
    key: str,
    value: object,
    send: Callable[[], Awaitable[Any]],
    result_of: Callable[[Any], object] = lambda _reply: None,
) -> Any:
    """Run one call, logging its invocation, completion and outcome (with ``result_of`` the
    reply, when OK); returns the reply, or None unless OK."""
    call = Call(op, key, value, time.monotonic())
    history.calls.append(call)
    try:
        reply = await send()
    except grpc.aio.AioRpcError as error:
        call.answered = time.monotonic()
        call.code = error.code().name
        call.retry_info = retry_info_of(error) is not None
        return None
    call.answered = time.monotonic()
    call.code = "OK"
    call.result = result_of(reply)
    return reply


async def run_load(
    stubs: list[Stub], work: Workload, history: History, stop: asyncio.Event
) -> None:
    """Every client of the load, until ``stop``."""
    turns = itertools.count()

    def next_stub() -> Stub:
        return stubs[next(turns) % len(stubs)]

    async def creates() -> None:
        while not stop.is_set():
            name = f"p{next(work.created_names)}"
            request = P.CreateProviderRequest(provider=provider(name))
            stub = next_stub()
            await _logged(
                history,
                "create",
                name,
                None,
                lambda s=stub, r=request: s.CreateProvider(r, timeout=DEADLINE_S),
            )
            await asyncio.sleep(PAUSE_S)

    async def toggles(sandbox: str, name: str) -> None:
        attach = True
        while not stop.is_set():
            stub, op = next_stub(), "attach" if attach else "detach"
            if attach:
                request: Any = P.AttachSandboxProviderRequest(sandbox=sandbox, provider=name)
                send = stub.AttachSandboxProvider
            else:
                request = P.DetachSandboxProviderRequest(sandbox=sandbox, provider=name)
                send = stub.DetachSandboxProvider
            await _logged(
                history,
                op,
                f"{sandbox}/{name}",
                None,
                lambda s=send, r=request: s(r, timeout=DEADLINE_S),
            )
            attach = not attach
            await asyncio.sleep(PAUSE_S)

    async def settings(sandbox: str) -> None:
        for value in itertools.count(1):
            if stop.is_set():
                return
            request = P.UpdateConfigRequest(sandbox=sandbox, setting_key=SETTING)
            request.setting_value.CopyFrom(sandbox_pb2.SettingValue(int_value=value))
            stub = next_stub()
            await _logged(
                history,
                "setting",
                sandbox,
                value,
                lambda s=stub, r=request: s.UpdateConfig(r, timeout=DEADLINE_S),
            )
            await asyncio.sleep(PAUSE_S)

    async def hot(client: int) -> None:
        for n in itertools.count():
            if stop.is_set():
                return
            stub = next_stub()
            read = await _logged(
                history,
                "read",
                HOT,
                None,
                lambda s=stub: s.GetProvider(P.GetProviderRequest(name=HOT), timeout=DEADLINE_S),
                lambda reply: (
                    reply.provider.config["v"],
                    reply.provider.metadata.resource_version,
                ),
            )
            if read is not None:
                update = provider(HOT, v=f"c{client}-{n}")
                version = read.provider.metadata.resource_version
                update.metadata.resource_version = version
                stub = next_stub()
                await _logged(
                    history,
                    "cas",
                    HOT,
                    (version, f"c{client}-{n}"),
                    lambda s=stub, u=update: s.UpdateProvider(
                        P.UpdateProviderRequest(provider=u), timeout=DEADLINE_S
                    ),
                    lambda reply: reply.provider.metadata.resource_version,
                )
            await asyncio.sleep(PAUSE_S)

    await asyncio.gather(
        creates(),
        *(toggles(s, p) for s, p in work.pairs()),
        *(settings(s) for s in work.sandboxes),
        *(hot(c) for c in range(work.hot_clients)),
    )


# ---- checks ------------------------------------------------------------------------------


def assert_expected_codes(history: History) -> None:
    unexpected = [(c.op, c.code) for c in history.calls if c.code not in EXPECTED_CODES]
    assert not unexpected, unexpected


async def assert_creates_stored(stub: Stub, history: History) -> None:
    stored: set[str] = set()
    token = ""
    while True:
        reply = await stub.ListProviders(P.ListProvidersRequest(page_size=1000, page_token=token))
        stored |= {p.metadata.name for p in reply.providers}
        token = reply.next_page_token
        if not token:
            break
    acknowledged = {c.key for c in history.acknowledged("create")}
    assert acknowledged and acknowledged <= stored, sorted(acknowledged - stored)


def possible_finals(calls: list[Call], state_of: Callable[[Call], object]) -> set[object]:
    """The states a sequence of one client's calls may have left: the last acknowledged
    call's, or that of any call whose outcome is unknown (it may have landed at any moment
    after it was sent). Empty when nothing was acknowledged."""
    acknowledged = [c for c in calls if c.code == "OK"]
    if not acknowledged:
        return set()
    maybe = {state_of(c) for c in calls if c.code in UNKNOWN_OUTCOME}
    return {state_of(acknowledged[-1])} | maybe


async def assert_attaches_and_settings_stored(
    stub: Stub, work: Workload, history: History
) -> dict[str, int]:
    """Every pair's and every setting's stored state is one its calls allow; returns how
    often the stored state came from a call with an unknown outcome, by kind."""
    from_unknown = {"attach": 0, "setting": 0}
    attached = {}
    for sandbox in work.sandboxes:
        reply = await stub.GetSandbox(P.GetSandboxRequest(name=sandbox))
        attached[sandbox] = set(reply.sandbox.spec.providers)
    for sandbox, name in work.pairs():
        calls = [c for c in history.calls if c.key == f"{sandbox}/{name}"]
        allowed = possible_finals(calls, lambda c: c.op == "attach")
        if allowed:
            stored = name in attached[sandbox]
            assert stored in allowed, (sandbox, name, stored, [(c.op, c.code) for c in calls])
            last = next(c for c in reversed(calls) if c.code == "OK")
            from_unknown["attach"] += stored != (last.op == "attach")
    for sandbox in work.sandboxes:
        calls = [c for c in history.calls if c.op == "setting" and c.key == sandbox]
        allowed = possible_finals(calls, lambda c: c.value)
        if allowed:
            config = await stub.GetSandboxConfig(sandbox_pb2.GetSandboxConfigRequest(name=sandbox))
            stored_value = config.settings[SETTING].value.int_value
            assert stored_value in allowed, (sandbox, stored_value, sorted(allowed, key=str))
            last = next(c for c in reversed(calls) if c.code == "OK")
            from_unknown["setting"] += stored_value != last.value
    return from_unknown


def hot_register_history(history: History) -> list[Operation]:
    """The hot provider's calls as the checker's operations."""
    ops = []
    for c in history.calls:
        if c.key != HOT or c.code not in EXPECTED_CODES:
            continue
        if c.op == "read":
            if c.code == "OK":  # a failed read changed nothing and observed nothing
                ops.append(Operation(c.invoked, c.answered, ("read",), c.result))
            continue
        expected, new = c.value  # type: ignore[misc]
        if c.code == "OK":
            output: object = ("ok", c.result)
        elif c.code == "ABORTED":
            output = ("conflict",)
        else:
            ops.append(Operation(c.invoked, math.inf, ("cas", expected, new), None))
            continue
        ops.append(Operation(c.invoked, c.answered, ("cas", expected, new), output))
    return ops


def assert_hot_register_linearizable(initial: CasRegister, history: History) -> int:
    """Check the hot provider's history; returns how many acknowledged cas it holds."""
    ops = hot_register_history(history)
    assert linearizable(initial, ops), "the hot provider's history is not linearizable"
    assert_checker_rejects_a_stale_read(initial, ops)
    return sum(1 for o in ops if o.output and o.output[0] == "ok")


def assert_checker_rejects_a_stale_read(initial: CasRegister, ops: list[Operation]) -> None:
    """The same history with one read made stale (the initial row, read after a cas was
    acknowledged) must fail: the check above could have failed on this history."""
    acknowledged = [o.completed for o in ops if o.output and o.output[0] == "ok"]
    if not acknowledged:
        return
    index = next(
        (i for i, o in enumerate(ops) if o.input == ("read",) and o.invoked > min(acknowledged)),
        None,
    )
    if index is None:
        return
    corrupted = list(ops)
    late = ops[index]
    corrupted[index] = Operation(late.invoked, late.completed, late.input, initial.initial())
    assert not linearizable(initial, corrupted), "the checker accepted a stale read"
