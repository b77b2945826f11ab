"""The history checker on small histories whose answer is known by hand."""

from __future__ import annotations

import math
import random

import pytest

from tests.support.linearizability import CasRegister, Operation, linearizable

INF = math.inf
REG = CasRegister("init", 1)


def op(invoked: float, completed: float, input: tuple[object, ...], output: object) -> Operation:
    return Operation(invoked, completed, input, output)


def read(a: float, b: float, value: str, version: int) -> Operation:
    return op(a, b, ("read",), (value, version))


def cas(a: float, b: float, expected: int, new: str, output: object) -> Operation:
    return op(a, b, ("cas", expected, new), output)


LINEARIZABLE = {
    "empty": [],
    "sequential": [
        read(0, 1, "init", 1),
        cas(2, 3, 1, "a", ("ok", 2)),
        cas(4, 5, 1, "b", ("conflict",)),
        read(6, 7, "a", 2),
    ],
    "overlapping reads see the old or the new value": [
        cas(0, 10, 1, "a", ("ok", 2)),
        read(1, 2, "init", 1),
        read(3, 4, "a", 2),
    ],
    "two concurrent cas on one version: one wins": [
        cas(0, 5, 1, "a", ("conflict",)),
        cas(1, 4, 1, "b", ("ok", 2)),
        read(6, 7, "b", 2),
    ],
    "an unknown cas that took effect": [
        cas(0, INF, 1, "a", None),
        read(5, 6, "a", 2),
    ],
    "an unknown cas that did not": [
        cas(0, INF, 1, "a", None),
        read(5, 6, "init", 1),
        cas(7, 8, 1, "b", ("ok", 2)),
    ],
    "an unknown cas taking effect long after it was sent": [
        cas(0, INF, 2, "late", None),
        cas(1, 2, 1, "a", ("ok", 2)),
        read(3, 4, "a", 2),
        read(5, 6, "late", 3),
    ],
    "a write bumps the version": [
        op(0, 1, ("write", "w"), ("ok", 2)),
        cas(2, 3, 2, "x", ("ok", 3)),
        read(4, 5, "x", 3),
    ],
}

NOT_LINEARIZABLE = {
    "a stale read after a completed cas": [
        cas(0, 1, 1, "a", ("ok", 2)),
        read(2, 3, "init", 1),
    ],
    "two cas on one version both succeed": [
        cas(0, 5, 1, "a", ("ok", 2)),
        cas(1, 4, 1, "b", ("ok", 2)),
    ],
    "a conflict on the current version": [
        read(0, 1, "init", 1),
        cas(2, 3, 1, "a", ("conflict",)),
        read(4, 5, "init", 1),
    ],
    "a value nobody wrote": [read(0, 1, "ghost", 2)],
    "the new value read before the cas was sent": [
        read(0, 1, "a", 2),
        cas(2, 3, 1, "a", ("ok", 2)),
    ],
    "reads going back in time": [
        cas(0, 10, 1, "a", ("ok", 2)),
        read(1, 2, "a", 2),
        read(3, 4, "init", 1),
    ],
    "an unknown cas cannot explain a version jump of two": [
        cas(0, INF, 1, "a", None),
        read(5, 6, "b", 3),
    ],
    "a lost acknowledged write": [
        cas(0, 1, 1, "a", ("ok", 2)),
        cas(2, 3, 2, "b", ("ok", 3)),
        read(4, 5, "a", 2),
    ],
}


@pytest.mark.parametrize("name", list(LINEARIZABLE))
def test_linearizable_histories_pass(name: str) -> None:
    assert linearizable(REG, LINEARIZABLE[name])


@pytest.mark.parametrize("name", list(NOT_LINEARIZABLE))
def test_non_linearizable_histories_fail(name: str) -> None:
    assert not linearizable(REG, NOT_LINEARIZABLE[name])


def simulated(seed: int, clients: int = 6, per_client: int = 30) -> list[Operation]:
    """A history of a real CAS register driven by concurrent clients, with each operation
    taking effect at a random instant inside its interval, and some outcomes lost."""
    rng = random.Random(seed)
    calls = []
    for c in range(clients):
        t = rng.random()
        for n in range(per_client):
            start, end = t, t + rng.uniform(0.1, 3.0)
            calls.append((rng.uniform(start, end), start, end, c, n))
            t = end + rng.uniform(0.0, 0.5)
    value, version = "init", 1
    known = {c: ("init", 1) for c in range(clients)}
    ops = []
    for _at, start, end, c, n in sorted(calls):  # in the order they take effect
        if rng.random() < 0.4:
            ops.append(read(start, end, value, version))
            known[c] = (value, version)
            continue
        expected = known[c][1] if rng.random() < 0.8 else version
        new = f"c{c}-{n}"
        if expected == version:
            value, version = new, version + 1
            output: object = ("ok", version)
        else:
            output = ("conflict",)
        lost = rng.random() < 0.1
        ops.append(cas(start, INF if lost else end, expected, new, None if lost else output))
    return ops


@pytest.mark.parametrize("seed", range(5))
def test_simulated_concurrent_histories_pass_and_a_corrupted_one_fails(seed: int) -> None:
    ops = simulated(seed)
    assert linearizable(REG, ops)
    # Make one acknowledged cas report a version it cannot have produced.
    index = next(i for i, o in enumerate(ops) if o.output and o.output[0] == "ok")
    broken = ops[index]
    ops[index] = Operation(broken.invoked, broken.completed, broken.input, ("ok", 10_000))
    assert not linearizable(REG, ops)
