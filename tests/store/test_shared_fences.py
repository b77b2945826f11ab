"""``SharedFences``: callers asking at once share moves, and each gets one that began after
it asked (the property the delete-versus-attach guard needs)."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from shellgate.store.repositories.fences import SharedFences

KEY = ("default", "shared")


class Row:
    """A row whose moves are counted and can be held open."""

    def __init__(self) -> None:
        self.moves: list[int] = []  # the clock reading when each move started
        self.clock = 0
        self.exists = True
        self.release = asyncio.Event()

    async def move(self) -> bool:
        self.moves.append(self.clock)
        await self.release.wait()
        return self.exists


async def test_callers_during_a_move_share_the_next_one_which_starts_after_them() -> None:
    fences, row = SharedFences(), Row()
    first = asyncio.create_task(fences.fence(KEY, row.move))
    await asyncio.sleep(0)
    row.clock = 1  # the others ask after the first move started
    others = [asyncio.create_task(fences.fence(KEY, row.move)) for _ in range(15)]
    await asyncio.sleep(0)
    row.release.set()
    assert await first is True
    assert await asyncio.gather(*others) == [True] * 15
    assert row.moves == [0, 1], "15 callers needed one move, begun after they asked"


async def test_each_caller_gets_the_answer_of_its_own_move() -> None:
    fences, row = SharedFences(), Row()

    async def gone_after_the_first_move() -> bool:
        await row.move()
        return len(row.moves) == 1

    first = asyncio.create_task(fences.fence(KEY, gone_after_the_first_move))
    await asyncio.sleep(0)
    later = asyncio.create_task(fences.fence(KEY, gone_after_the_first_move))
    await asyncio.sleep(0)
    row.release.set()
    assert await first is True
    assert await later is False, "the later caller was answered by the move before it"


async def test_an_error_of_the_shared_move_reaches_every_caller_of_it() -> None:
    fences = SharedFences()
    release = asyncio.Event()
    calls = 0

    async def failing_after_the_first() -> bool:
        nonlocal calls
        calls += 1
        await release.wait()
        if calls > 1:
            raise RuntimeError("database down")
        return True

    first = asyncio.create_task(fences.fence(KEY, failing_after_the_first))
    await asyncio.sleep(0)
    others = [asyncio.create_task(fences.fence(KEY, failing_after_the_first)) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    assert await first is True
    for other in others:
        with pytest.raises(RuntimeError, match="database down"):
            await other
    with pytest.raises(RuntimeError):  # nothing left running: a new caller moves at once
        await asyncio.wait_for(fences.fence(KEY, failing_after_the_first), 5)


CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="none")


async def test_a_shared_move_runs_outside_the_first_callers_context() -> None:
    """The first caller's context carries its own gRPC deadline (and any pinned connection);
    the move shared by the callers after it must not run under it."""
    fences, row = SharedFences(), Row()
    seen: list[str] = []

    async def move() -> bool:
        seen.append(CALLER.get())
        return await row.move()

    async def first_caller() -> bool:
        CALLER.set("first")
        return await fences.fence(KEY, move)

    first = asyncio.create_task(first_caller())
    await asyncio.sleep(0)
    later = asyncio.create_task(fences.fence(KEY, move))
    await asyncio.sleep(0)
    row.release.set()
    assert (await first, await later) == (True, True)
    assert seen == ["first", "none"]
