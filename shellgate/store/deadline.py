"""The caller's deadline, carried to the store without passing it through every signature.

The gRPC layer sets it from the client's deadline for the duration of one call; a store
that may have to wait (SQLite waiting for another process's lock) gives up before the client
would, so the client gets a prompt UNAVAILABLE it can retry instead of DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar

_deadline: ContextVar[float | None] = ContextVar("shellgate_store_deadline", default=None)


@contextlib.contextmanager
def deadline_in(seconds: float | None) -> Iterator[None]:
    """Within the block, store calls finish (or give up) within ``seconds`` from now."""
    token = _deadline.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining_seconds() -> float | None:
    """Seconds left before the caller's deadline; None when the caller set none."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()
