"""begin_stop / begin_start / begin_delete: every phase times every action."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from shellgate.reconcilers import FailedPrecondition, begin_delete, begin_start, begin_stop
from shellgate.reconcilers.sandbox import Mutation

from .helpers import ALL_PHASES, P, copy_of, name_of, sandbox

SAME = "unchanged"
REFUSED = "FailedPrecondition"

STOP = {
    P.SANDBOX_PHASE_UNSPECIFIED: P.SANDBOX_PHASE_STOPPING,
    P.SANDBOX_PHASE_PROVISIONING: P.SANDBOX_PHASE_STOPPING,
    P.SANDBOX_PHASE_READY: P.SANDBOX_PHASE_STOPPING,
    P.SANDBOX_PHASE_ERROR: REFUSED,
    P.SANDBOX_PHASE_DELETING: REFUSED,
    P.SANDBOX_PHASE_UNKNOWN: P.SANDBOX_PHASE_STOPPING,
    P.SANDBOX_PHASE_STOPPING: SAME,
    P.SANDBOX_PHASE_STOPPED: SAME,
    P.SANDBOX_PHASE_STARTING: P.SANDBOX_PHASE_STOPPING,
    P.SANDBOX_PHASE_COMPLETED: P.SANDBOX_PHASE_STOPPING,
}
START = {
    P.SANDBOX_PHASE_UNSPECIFIED: SAME,
    P.SANDBOX_PHASE_PROVISIONING: SAME,
    P.SANDBOX_PHASE_READY: SAME,
    P.SANDBOX_PHASE_ERROR: P.SANDBOX_PHASE_STARTING,
    P.SANDBOX_PHASE_DELETING: REFUSED,
    P.SANDBOX_PHASE_UNKNOWN: SAME,
    P.SANDBOX_PHASE_STOPPING: REFUSED,
    P.SANDBOX_PHASE_STOPPED: P.SANDBOX_PHASE_STARTING,
    P.SANDBOX_PHASE_STARTING: SAME,
    P.SANDBOX_PHASE_COMPLETED: P.SANDBOX_PHASE_STARTING,
}
DELETE = {phase: P.SANDBOX_PHASE_DELETING for phase in ALL_PHASES} | {
    P.SANDBOX_PHASE_DELETING: SAME
}
ACTIONS: dict[str, tuple[Callable[[], Mutation], dict[int, int | str]]] = {
    "stop": (begin_stop, STOP),
    "start": (begin_start, START),
    "delete": (begin_delete, DELETE),
}


def test_tables_cover_every_phase() -> None:
    for _, table in ACTIONS.values():
        assert sorted(table) == sorted(ALL_PHASES)


@pytest.mark.parametrize(
    ("action", "phase"),
    [
        pytest.param(action, phase, id=f"{action}-from-{name_of(phase)}")
        for action in ACTIONS
        for phase in ALL_PHASES
    ],
)
def test_transition(action: str, phase: int) -> None:
    factory, table = ACTIONS[action]
    expected = table[phase]
    row = sandbox(phase)
    if expected == REFUSED:
        with pytest.raises(FailedPrecondition) as raised:
            factory()(copy_of(row))
        assert raised.value.current_state == P.SandboxPhase.Name(phase)
        assert name_of(phase) in str(raised.value)
        return
    result = factory()(copy_of(row))
    if expected == SAME:
        assert result == row
        return
    assert result.status.phase == expected
    result.status.phase = row.status.phase
    assert result == row, "only status.phase may change"


def test_start_while_stopping_says_still_stopping() -> None:
    with pytest.raises(FailedPrecondition, match="still stopping"):
        begin_start()(sandbox(P.SANDBOX_PHASE_STOPPING))


@pytest.mark.parametrize("factory", [begin_stop, begin_start, begin_delete])
def test_applying_twice_changes_nothing_the_second_time(
    factory: Callable[[], Mutation],
) -> None:
    for phase in (P.SANDBOX_PHASE_READY, P.SANDBOX_PHASE_STOPPED):
        once = factory()(sandbox(phase))
        twice = factory()(copy_of(once))
        assert twice == once
