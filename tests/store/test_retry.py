"""``retry_on_conflict``: attempts, pauses, the final Conflict and what the observer hears.

The loop itself touches no database; the writes it retries are tested on both backends
through the repositories (tests/gateway, tests/config) and ``update_message_cas``
(tests/store/test_cas.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from shellgate.store import Conflict, NotFound, RetryPolicy, UniqueViolation
from shellgate.store.retry import retry_on_conflict


@dataclass
class Heard:
    attempts: list[tuple[str, str]] = field(default_factory=list)
    calls: list[tuple[str, int, bool]] = field(default_factory=list)

    def cas_attempt(self, object_type: str, result: str) -> None:
        self.attempts.append((object_type, result))

    def cas_call(self, object_type: str, attempts: int, exhausted: bool) -> None:
        self.calls.append((object_type, attempts, exhausted))

    def operation(
        self, backend: str, operation: str, seconds: float, available: bool | None
    ) -> None:
        return None


@dataclass(frozen=True)
class RecordedPauses(RetryPolicy):
    """The store's policy with tiny delays, remembering each pause it chose."""

    chosen: list[tuple[int, float]] = field(default_factory=list, compare=False)

    def pause(self, failed_attempt: int, rng: random.Random) -> float:
        seconds = super().pause(failed_attempt, rng)
        self.chosen.append((failed_attempt, seconds))
        return seconds


def losing(times: int, error: Exception) -> tuple[list[int], object]:
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(len(calls) + 1)
        if len(calls) <= times:
            raise error
        return "done"

    return calls, attempt


POLICY = RecordedPauses(base_delay=0.001, max_delay=0.003)


async def test_retries_until_an_attempt_wins_pausing_under_the_growing_ceiling() -> None:
    heard = Heard()
    policy = RecordedPauses(base_delay=0.001, max_delay=0.003)
    calls, attempt = losing(3, Conflict(7))
    result = await retry_on_conflict(
        policy, random.Random(1), attempt, observer=heard, object_type="sandbox"
    )
    assert result == "done" and calls == [1, 2, 3, 4]
    assert [n for n, _ in policy.chosen] == [1, 2, 3]
    for failed, seconds in policy.chosen:
        assert 0 <= seconds <= min(0.003, 0.001 * 2 ** (failed - 1))
    assert heard.attempts == [("sandbox", "conflict")] * 3
    assert heard.calls == [("sandbox", 4, False)]


async def test_exhausted_retries_raise_conflict_with_the_last_known_version() -> None:
    heard = Heard()
    calls, attempt = losing(99, Conflict(42))
    with pytest.raises(Conflict) as caught:
        await retry_on_conflict(
            POLICY, random.Random(1), attempt, observer=heard, object_type="provider"
        )
    assert calls == [1, 2, 3, 4, 5]  # the policy's 5 attempts
    assert caught.value.current_resource_version == 42
    assert heard.calls == [("provider", 5, True)]


async def test_other_retriable_errors_end_in_conflict_without_a_version() -> None:
    calls, attempt = losing(99, UniqueViolation("objects_version_uq"))
    with pytest.raises(Conflict) as caught:
        await retry_on_conflict(
            POLICY,
            random.Random(1),
            attempt,
            observer=Heard(),
            object_type="sandbox_policy",
            retriable=(UniqueViolation,),
            attempts=3,
        )
    assert calls == [1, 2, 3]
    assert caught.value.current_resource_version is None


async def test_an_error_that_is_not_retriable_ends_the_loop_at_once() -> None:
    heard = Heard()
    calls, attempt = losing(1, NotFound("sandbox", "x"))
    with pytest.raises(NotFound):
        await retry_on_conflict(
            POLICY, random.Random(1), attempt, observer=heard, object_type="sandbox"
        )
    assert calls == [1]
    assert heard.attempts == [] and heard.calls == [("sandbox", 1, False)]


async def test_a_single_allowed_attempt_that_lost_is_not_an_exhausted_retry() -> None:
    heard = Heard()
    _, attempt = losing(1, Conflict(3))
    with pytest.raises(Conflict):
        await retry_on_conflict(
            POLICY, random.Random(1), attempt, observer=heard, object_type="sandbox", attempts=1
        )
    assert heard.calls == [("sandbox", 1, False)]


async def test_an_outer_loop_without_object_type_reports_nothing() -> None:
    heard = Heard()
    _, attempt = losing(2, UniqueViolation(None))
    await retry_on_conflict(
        POLICY,
        random.Random(1),
        attempt,
        observer=heard,
        object_type=None,
        retriable=(UniqueViolation,),
    )
    assert heard.attempts == [] and heard.calls == []
