"""A small linearizability checker for one object, in the manner of porcupine.

A history is a list of operations, each with the client's invocation and completion times,
its input and its observed output. It is linearizable when every operation can be given one
instant between its invocation and its completion such that, applied in that order, the
object's sequential model produces every observed output.

The search is Wing and Gong's, with Lowe's memoization as porcupine does it: walk the
invocation and completion events in time order; at an invocation, try to linearize that
operation next (the model must accept it); at a completion of an operation not yet
linearized, undo the latest choice and try the next candidate. A (set of linearized
operations, model state) pair seen before cannot lead anywhere new and is skipped, which
keeps real histories of a few hundred operations quick.

A call whose outcome the client does not know (UNAVAILABLE, a deadline, a dropped
connection) may have taken effect at any instant after its invocation or not at all: it is
recorded with ``completed=math.inf`` and ``output=None``, and the model treats it as either.
Nondeterminism is handled as porcupine does: the checker's state is the set of states the
model may be in.

``CasRegister`` is the model the fault tests use: a value with a resource version, read,
written unconditionally (``write``) and compared-and-swapped on the version (``cas``), as
UpdateProvider behaves with and without ``metadata.resource_version``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

State = Hashable


@dataclass(frozen=True)
class Operation:
    """One call. ``completed`` is ``math.inf`` and ``output`` None when its outcome is unknown."""

    invoked: float
    completed: float
    input: Any
    output: Any

    @property
    def outcome_known(self) -> bool:
        return self.completed != math.inf


class Model(Protocol):
    def initial(self) -> State: ...

    def step(self, state: State, op: Operation) -> Iterable[State]:
        """Every state the object may be in after ``op`` from ``state``; none if ``op``'s
        observed output is impossible there."""
        ...


@dataclass(frozen=True)
class CasRegister:
    """A register of (value, version). Inputs and outputs:

    - ``("read",)`` → ``(value, version)``
    - ``("cas", expected_version, new_value)`` → ``("ok", new_version)`` or ``("conflict",)``
    - ``("write", new_value)`` → ``("ok", new_version)``

    Every successful write bumps the version by one, as the store's CAS does. An operation
    with an unknown outcome either happened (when it could) or did not.
    """

    value: object
    version: int

    def initial(self) -> State:
        return (self.value, self.version)

    def step(self, state: State, op: Operation) -> Iterable[State]:
        value, version = cast(tuple[object, int], state)
        kind = op.input[0]
        if kind == "read":
            return [state] if op.output is None or op.output == (value, version) else []
        applies = kind == "write" or op.input[1] == version
        after = (op.input[-1], version + 1)
        if op.output is None:
            return [state, after] if applies else [state]
        if op.output[0] == "conflict":
            return [state] if kind == "cas" and not applies else []
        return [after] if applies and op.output == ("ok", version + 1) else []


@dataclass
class _Event:
    """A node of the doubly linked list of invocation and completion events."""

    op_index: int
    is_call: bool
    match: _Event | None = None
    prev: _Event | None = None
    next: _Event | None = None


def _event_list(ops: Sequence[Operation]) -> _Event:
    """The events in time order behind a sentinel head; an invocation sorts before a
    completion at the same instant (the two calls count as concurrent)."""
    keyed: list[tuple[float, int, int, _Event]] = []
    for index, op in enumerate(ops):
        if op.completed < op.invoked:
            raise ValueError(f"operation {index} completes before it is invoked")
        call, done = _Event(index, True), _Event(index, False)
        call.match = done
        keyed.append((op.invoked, 0, index, call))
        keyed.append((op.completed, 1, index, done))
    keyed.sort(key=lambda item: item[:3])
    head = _Event(-1, False)
    tail = head
    for *_, event in keyed:
        tail.next, event.prev = event, tail
        tail = event
    return head


def _lift(call: _Event) -> None:
    """Take an operation's invocation and completion out of the list."""
    for event in (call, call.match):
        assert event is not None and event.prev is not None
        event.prev.next = event.next
        if event.next is not None:
            event.next.prev = event.prev


def _unlift(call: _Event) -> None:
    """Put them back, in reverse order of removal."""
    for event in (call.match, call):
        assert event is not None and event.prev is not None
        event.prev.next = event
        if event.next is not None:
            event.next.prev = event


def linearizable(model: Model, ops: Sequence[Operation]) -> bool:
    """True if some order of ``ops`` respecting real time explains every output."""
    head = _event_list(ops)
    states: frozenset[State] = frozenset([model.initial()])
    linearized = 0
    seen: set[tuple[int, frozenset[State]]] = set()
    stack: list[tuple[_Event, frozenset[State]]] = []
    event = head.next
    while head.next is not None:
        assert event is not None
        if event.is_call:
            op = ops[event.op_index]
            after = frozenset(s for state in states for s in model.step(state, op))
            candidate = (linearized | 1 << event.op_index, after)
            if after and candidate not in seen:
                seen.add(candidate)
                stack.append((event, states))
                states, linearized = after, candidate[0]
                _lift(event)
                event = head.next
                continue
            event = event.next
            continue
        # An operation completed before we could linearize it: undo the latest choice.
        if not stack:
            return False
        call, states = stack.pop()
        linearized &= ~(1 << call.op_index)
        _unlift(call)
        event = call.next
    return True
