"""A small pool of asyncpg connections, cheap to take from and give back to.

asyncpg's own pool costs more per acquire and release than a statement's round trip on the
client side: the release alone runs as a separate task (``asyncio.shield``), and each
acquire goes through a queue of connection holders. A CAS attempt takes a connection once
and gives it back once, so on the path of every update that overhead was paid per write
(bench/profile_cas.py). Here a free connection is taken from a list and given back to
the next waiter or to the list, without suspending.

What a pool must still do is kept: at most ``max_size`` connections, a bounded wait for
one (``asyncio.TimeoutError`` after ``acquire_timeout``), a broken connection or one left
inside a transaction is closed instead of reused, and waiters are served in order.

Two things the hot path needs are kept here too, per connection:

* **Prepared statements** for the fixed statements the caller names (``prepared``): calling
  a ``PreparedStatement`` skips asyncpg's statement-cache lookup and its query wrapper.
* **The statement clock.** The client's last-resort bound on a statement (the server's
  ``statement_timeout`` plus slack, for a server or network that stopped answering) is one
  watchdog task for the whole pool, not asyncpg's ``command_timeout``, which arms and
  cancels an event-loop timer around every statement: two timers per CAS attempt, about
  3 % of an update's time (bench/profile_cas.py). A statement is clocked by ``started`` and
  ``finished``; a connection whose statement outlived the bound is terminated, so the
  awaiting call fails at once with a lost connection (UNAVAILABLE) and the pool replaces it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg
from asyncpg.prepared_stmt import PreparedStatement

log = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[asyncpg.Connection]]

WATCHDOG_MAX_INTERVAL = 1.0
"""The statement clock looks at least this often (seconds); a stuck statement fails within
its bound plus this."""


class ConnectionPool:
    """Up to ``max_size`` connections made by ``connect``; ``acquire`` / ``release``."""

    def __init__(
        self,
        connect: Connect,
        *,
        max_size: int,
        acquire_timeout: float,
        statement_limit: float | None = None,
    ) -> None:
        self._connect = connect
        self._max_size = max_size
        self._acquire_timeout = acquire_timeout
        self._statement_limit = statement_limit
        self._running: dict[asyncpg.Connection, float] = {}  # connection -> its deadline
        self._prepared: dict[asyncpg.Connection, dict[str, PreparedStatement]] = {}
        self._watchdog: asyncio.Task[None] | None = None
        self._idle: list[asyncpg.Connection] = []
        self._size = 0  # connections made and not yet discarded, idle or in use
        self._waiters: collections.deque[asyncio.Future[asyncpg.Connection | None]] = (
            collections.deque()
        )
        self._closed = False

    async def fill(self, count: int) -> None:
        """Open ``count`` connections now (the pool's minimum), so the first calls find one."""
        opened = [await self.acquire() for _ in range(count)]
        for conn in opened:
            self.release(conn)

    def acquire_now(self) -> asyncpg.Connection | None:
        """A free connection without suspending, or None (then ``acquire``)."""
        while self._idle and not self._closed:
            conn = self._idle.pop()
            if not conn.is_closed():
                return conn
            self._prepared.pop(conn, None)
            self._size -= 1
        return None

    async def acquire(self) -> asyncpg.Connection:
        """A connection for the caller alone until ``release``; waits at most the timeout."""
        if self._closed:
            raise asyncpg.exceptions.InterfaceError("the pool is closed")
        conn = self.acquire_now()
        if conn is not None:
            return conn
        if self._size < self._max_size:
            return await self._open_one()
        return await self._wait_for_one()

    def release(self, conn: asyncpg.Connection) -> None:
        """Give ``conn`` back: to the longest waiter, else to the free list."""
        if self._closed or conn.is_closed() or conn.is_in_transaction():
            self._discard(conn)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def _discard(self, conn: asyncpg.Connection) -> None:
        """Drop a connection that must not be reused; a waiter may open a new one."""
        if not conn.is_closed():
            conn.terminate()
        self._prepared.pop(conn, None)
        self._running.pop(conn, None)
        self._size -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # a slot is free: the waiter opens a connection
                return

    async def _open_one(self) -> asyncpg.Connection:
        self._size += 1
        try:
            conn = await self._connect()
        except BaseException:
            self._size -= 1
            raise
        if self._statement_limit is not None and self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="postgres-statement-clock")
        return conn

    # ----- per connection: prepared statements and the statement clock ---------------------

    def prepared_now(self, conn: asyncpg.Connection, sql: str) -> PreparedStatement | None:
        """``sql`` as already prepared on ``conn``, or None (then ``prepare``)."""
        statements = self._prepared.get(conn)
        return None if statements is None else statements.get(sql)

    async def prepare(self, conn: asyncpg.Connection, sql: str) -> PreparedStatement:
        """Prepare ``sql`` on ``conn`` and keep it for the connection's life (the caller
        holds ``conn``). Only for the fixed statements of the hot path."""
        self.started(conn)
        try:
            statement = await conn.prepare(sql)
        finally:
            self.finished(conn)
        self._prepared.setdefault(conn, {})[sql] = statement
        return statement

    def started(self, conn: asyncpg.Connection) -> None:
        """A statement starts on ``conn``: the clock runs until ``finished``."""
        if self._statement_limit is not None:
            self._running[conn] = time.monotonic() + self._statement_limit

    def finished(self, conn: asyncpg.Connection) -> None:
        self._running.pop(conn, None)

    async def _watch(self) -> None:
        """Terminate the connections whose statement outlived the bound (see the module)."""
        assert self._statement_limit is not None
        interval = min(WATCHDOG_MAX_INTERVAL, self._statement_limit / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for conn, deadline in list(self._running.items()):
                if now >= deadline:
                    log.warning(
                        "a Postgres statement ran past %.1f s; closing its connection",
                        self._statement_limit,
                    )
                    self._running.pop(conn, None)
                    conn.terminate()

    async def _wait_for_one(self) -> asyncpg.Connection:
        waiter: asyncio.Future[asyncpg.Connection | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiters.append(waiter)
        try:
            conn = await asyncio.wait_for(waiter, self._acquire_timeout)
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                self.release(waiter.result())  # handed over just as the wait ended
            elif waiter.done() and not waiter.cancelled():
                self._wake_one_in_my_place()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            raise
        return conn if conn is not None else await self._open_one()

    def _wake_one_in_my_place(self) -> None:
        """A free slot was handed to a waiter that gave up: pass it to the next one."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Close the free connections now; those in use close when they are released."""
        self._closed = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close(timeout=1)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(asyncpg.exceptions.InterfaceError("the pool is closed"))
