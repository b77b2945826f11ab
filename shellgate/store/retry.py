"""``retry_on_conflict``: the one retry loop for writes that can lose a race.

Every writer that reads, decides and writes under a condition (a CAS at the version read, a
``delete_if`` at a version, an insert at version n+1) can lose to another writer. Losing is
normal: the writer reads again, decides again on what is there now, and writes again. This
helper is that loop, once, for all of them (client-go calls it ``RetryOnConflict``):

* at most ``attempts`` calls of ``attempt`` (the policy's, 5 by default); each call must
  re-read and re-apply, never re-send what an earlier call built;
* between calls a random pause under a growing ceiling (the policy's full jitter), so a burst
  of writers spreads out instead of colliding again in lockstep;
* when every call lost, ``Conflict`` (ABORTED at the API), carrying the current version when
  the last loss knew it (counted as exhausted unless only one call was allowed: a single
  client-driven attempt that found a stale version ran out of nothing);
* each lost call is reported to the observer as a ``conflict`` attempt and each finished loop
  as one call with its attempt count, under ``object_type``. The winning call reports its own
  result (``written`` or ``noop``), because only it knows which it was. ``object_type=None``
  reports nothing: for an outer loop around ``update_message_cas``, which reports its own
  attempts and calls already (counting them twice would skew the histogram).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from shellgate.store.errors import Conflict
from shellgate.store.observer import StoreObserver

R = TypeVar("R")

Attempt = Callable[[], Awaitable[R]]


class Backoff(Protocol):
    """What the loop needs of ``RetryPolicy`` (a protocol, so base.py may import this module)."""

    @property
    def attempts(self) -> int: ...

    def pause(self, failed_attempt: int, rng: random.Random) -> float: ...


async def retry_on_conflict(
    policy: Backoff,
    rng: random.Random,
    attempt: Attempt[R],
    *,
    observer: StoreObserver,
    object_type: str | None,
    retriable: tuple[type[Exception], ...] = (Conflict,),
    attempts: int | None = None,
) -> R:
    """Call ``attempt`` until it returns, retrying on ``retriable``; see the module docstring."""
    result, _attempts = await retry_counting(
        policy,
        rng,
        attempt,
        observer=observer,
        object_type=object_type,
        retriable=retriable,
        attempts=attempts,
    )
    return result


async def retry_counting(
    policy: Backoff,
    rng: random.Random,
    attempt: Callable[..., Awaitable[R]],
    *args: Any,
    observer: StoreObserver,
    object_type: str | None,
    retriable: tuple[type[Exception], ...] = (Conflict,),
    attempts: int | None = None,
) -> tuple[R, int]:
    """``retry_on_conflict`` calling ``attempt(*args)``, returning its result and the number
    of calls it took. The arguments are passed through, so a caller on the hot path (every
    update) needs no closure per call."""
    limit = policy.attempts if attempts is None else attempts
    last: Exception | None = None
    for number in range(1, limit + 1):
        try:
            result = await attempt(*args)
        except retriable as lost:
            if object_type is not None:
                observer.cas_attempt(object_type, "conflict")
            last = lost
            if number < limit:
                await asyncio.sleep(policy.pause(number, rng))
            continue
        except BaseException:
            if object_type is not None:
                observer.cas_call(object_type, number, exhausted=False)
            raise
        if object_type is not None:
            observer.cas_call(object_type, number, exhausted=False)
        return result, number
    if object_type is not None:
        # One allowed attempt (a client-driven CAS) lost to a stale version; that is not a
        # retry budget running out.
        observer.cas_call(object_type, limit, exhausted=limit > 1)
    current = last.current_resource_version if isinstance(last, Conflict) else None
    raise Conflict(current) from last
