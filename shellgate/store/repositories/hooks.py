"""Named points inside the repositories' multi-step protocols where a test may pause.

A race between two requests only matters at a few points (after DeleteProvider scanned for
references and before it deletes; after an attach wrote the sandbox and before it fenced the
provider; before a chunk decision's CAS). Each repository exposes those points as awaitable
hooks, called with the key of the row involved. In production they do nothing; a test sets
one to a coroutine gated on an ``asyncio.Event`` and so forces the interleaving it wants to
check instead of hoping the scheduler produces it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

Hook = Callable[[str], Awaitable[None]]


async def no_hook(_key: str) -> None:
    """The production hook: nothing to wait for."""
