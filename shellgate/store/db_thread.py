"""Where SQLite's blocking calls run: one dedicated thread, and who else uses the file.

``DatabaseThread`` runs blocking database calls in order, for one event loop.

A call handed over costs one wake-up of this thread and one of the event loop, and nothing
else: no executor work items, no futures wrapped in futures. The calls run one at a time in
the order they were handed over, so a connection used only from here (or only while its
owner holds the turn that hands calls here) is never used by two threads at once.

``FileUsers`` tells a store whether it is the only shellgate process with the file open.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_Call = tuple[Callable[[], Any], "asyncio.Future[Any]", asyncio.AbstractEventLoop]


class DatabaseThread:
    """Runs the callables given to ``run`` on its own thread; ``stop`` ends it."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def run(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """A future for ``call()``, run on the thread after every call handed over before."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.put((call, future, loop))
        return future

    async def stop(self) -> None:
        """Finish the calls already handed over, then end the thread."""
        self._calls.put(None)
        await asyncio.to_thread(self._thread.join)

    def _serve(self) -> None:
        while (item := self._calls.get()) is not None:
            call, future, loop = item
            try:
                result = call()
            except BaseException as exc:  # handed to the awaiting task, whatever it is
                _settle_soon(loop, future, None, exc)
            else:
                _settle_soon(loop, future, result, None)


def _settle_soon(
    loop: asyncio.AbstractEventLoop,
    future: asyncio.Future[Any],
    result: Any,
    error: BaseException | None,
) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
        loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled by its caller; the call still ran to its end
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


ALONE_RECHECK_SECONDS = 0.5


class FileUsers:
    """Each store holds a shared ``flock`` on a file beside the database; a store that can
    turn it into an exclusive one is the only shellgate process using the database.

    Checked at most every ``ALONE_RECHECK_SECONDS`` (two system calls). The answer is a
    hint for scheduling, never for correctness: two processes briefly both believing they
    are alone only write less fairly for that moment.
    """

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        self._alone = False
        self._checked_at = float("-inf")

    def alone(self, now: float) -> bool:
        if now - self._checked_at >= ALONE_RECHECK_SECONDS:
            self._checked_at = now
            self._alone = self._try_exclusive()
        return self._alone

    def _try_exclusive(self) -> bool:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(self._fd, fcntl.LOCK_SH)  # back to shared, so others see this user
        return True

    def close(self) -> None:
        os.close(self._fd)  # releases the lock
