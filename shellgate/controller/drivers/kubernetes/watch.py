"""kopf inside ``shellgate serve``: the watch half of the Kubernetes driver.

Every replica runs kopf standalone (no peering), with its own ``kopf.OperatorRegistry`` holding
``@kopf.on.event`` handlers only. Event handlers keep no progress and write nothing back, so
kopf never patches an object and replicas never fight over one; the Role needs no ``patch`` for
kopf's sake and, with event posting off, no ``create`` on events. Scanning is off as well, so
kopf needs no cluster-wide list of namespaces or CRDs: it serves the one namespace it is given
and the resources discovery showed at start.

**Embedding.** kopf runs the way its documentation recommends for embedding: ``kopf.operator``
in an event loop of its own, in a thread of its own, stopped through its ``stop_flag``. In the
gateway's loop it would treat every task created after it started (the gRPC server's included)
as its own, wait for them when stopping and then cancel them. Off the main thread it installs
no signal handlers either, so SIGTERM stays the gateway's. Its ``ready_flag`` tells when a run
has started. Handlers run in kopf's loop and only hand the raw object to the driver's callbacks
through ``call_soon_threadsafe``, so everything the driver keeps lives in the gateway's loop.

**Restarts and retries.** Should ``kopf.operator`` return or fail by itself, it is started again
after a capped backoff. kopf's request retries are made endless (``RetryForever``): by default a
watch that still fails after kopf's last retry ends the whole operator, whereas an API outage
should only make the watch "not connected" until it is over. kopf's "ultimate exit" timer (a
SIGKILL some minutes after an unclean stop) is switched off: it would kill the gateway.

**Health.** kopf says nothing about whether its watch streams are connected; it retries
quietly. It does let a login handler supply the HTTP session it uses (``kopf.AiohttpSession``),
so ours carries an aiohttp ``TraceConfig`` that watches the requests of the Sandbox watch
stream: a watch request that got response headers with a 2xx status means connected; a new
watch request (kopf reconnecting), a failed one, or a failed listing means not connected until
a watch request succeeds again. ``KopfWatch.ready`` (and so ``/readyz``) is "a kopf run has
started and not ended, and the Sandbox stream is connected". A stream that dies quietly
mid-body is noticed when kopf reconnects (at once, or after ``inactivity_timeout`` for a silent
stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import aiohttp
import kopf

from shellgate.controller.drivers.kubernetes.client import (
    WATCH_USER_AGENT,
    Login,
    connection_info,
)
from shellgate.controller.drivers.kubernetes.manifest import (
    GROUP,
    MANAGED_SELECTOR,
    PLURAL,
    Body,
    collection_path,
)

log = logging.getLogger(__name__)

SandboxCallback = Callable[[str | None, Body], None]
"""``(event type, object)``; the type is None for objects from the initial listing."""
CoreEventCallback = Callable[[Body], None]

DEFAULT_ERROR_BACKOFFS: tuple[float, ...] = (0.5, 1, 2, 3, 5, 8, 13)
"""Pauses between kopf's retries of one failed request; the last one repeats forever."""
RESTART_DELAYS: tuple[float, ...] = (1, 2, 5, 10, 30)
"""Pauses before restarting kopf after it stopped by itself (the last one repeats)."""
HEALTHY_RUN_SECONDS = 60.0
"""A run at least this long resets the restart backoff."""
STOP_SECONDS = 5.0
"""How long ``close()`` waits for kopf's thread; the gateway's whole stop budget is 10 s."""
STOP_GRACE_SECONDS = 1.0
"""How long kopf may take to stop on its stop flag before its run is cancelled."""
QUEUE_EXIT_SECONDS = 0.5
"""How long kopf lets its per-object workers drain their queues when it stops.

The handlers only hand objects over, so half a second is plenty; kopf's default (2 s) would
eat a fifth of the gateway's stop budget whenever a worker is still idling.
"""


class WatchHealth:
    """Whether kopf's Sandbox watch stream is connected, seen through its HTTP requests.

    Only requests to ``collection`` (the namespace's Sandbox collection path) count: a watch
    request (``watch=true``) that got a 2xx answer makes it up; starting another watch
    request, or any failure of a request there (listing included), makes it down. The
    callbacks run in kopf's thread; ``up`` is a plain attribute read from the gateway's.
    """

    def __init__(self, collection: str) -> None:
        self._collection = collection
        self._up = False
        self.changed_at = time.monotonic()
        self.trace_config = aiohttp.TraceConfig()
        self.trace_config.on_request_start.append(self._started)
        self.trace_config.on_request_end.append(self._ended)
        self.trace_config.on_request_exception.append(self._failed)

    @property
    def up(self) -> bool:
        return self._up

    def set(self, up: bool, *, quiet: bool = False) -> None:
        if up != self._up:
            self._up = up
            self.changed_at = time.monotonic()
            if quiet:
                return
            log.log(
                logging.INFO if up else logging.WARNING,
                "Sandbox watch stream %s",
                "connected" if up else "disconnected",
            )

    def _concerns(self, url: Any) -> tuple[bool, bool]:
        """(is it our collection, is it a watch request)."""
        ours = str(url.path).rstrip("/") == self._collection
        return ours, ours and url.query.get("watch") in ("true", "1")

    async def _started(self, _session: Any, _ctx: Any, params: Any) -> None:
        _, watching = self._concerns(params.url)
        if watching:
            self.set(False)

    async def _ended(self, _session: Any, _ctx: Any, params: Any) -> None:
        ours, watching = self._concerns(params.url)
        status = params.response.status
        if watching and status < 300:
            self.set(True)
        elif ours and status >= 300:
            self.set(False)

    async def _failed(self, _session: Any, _ctx: Any, params: Any) -> None:
        ours, _ = self._concerns(params.url)
        if ours:
            self.set(False)


class RetryForever:
    """Backoffs that never run out: the given pauses, then the last one again and again.

    kopf retries a failed request once per pause and gives up after the last; a watch that
    gives up ends kopf's orchestrator. Given an iterable without a length, kopf keeps retrying
    (each request iterates it afresh), so an API outage or a run of 5xx answers only makes the
    watch "not connected" until it is over.
    """

    def __init__(self, delays: Iterable[float]) -> None:
        self._delays = tuple(delays) or (1.0,)

    def __iter__(self) -> Iterator[float]:
        yield from self._delays
        yield from itertools.repeat(self._delays[-1])


def operator_settings(error_backoffs: Iterable[float]) -> kopf.OperatorSettings:
    """kopf as a pure watcher: no posting, no scanning, no peering, no ultimate SIGKILL."""
    settings = kopf.OperatorSettings()
    settings.posting.enabled = False
    settings.scanning.disabled = True
    settings.peering.standalone = True
    settings.process.ultimate_exiting_timeout = None
    settings.networking.error_backoffs = RetryForever(error_backoffs)
    settings.watching.connect_timeout = 10
    settings.watching.label_selectors[GROUP, PLURAL] = MANAGED_SELECTOR
    settings.queueing.exit_timeout = QUEUE_EXIT_SECONDS
    return settings


class KopfWatch:
    """Runs kopf for one namespace and one agent-sandbox version in a thread of its own.

    ``start()`` and ``close()`` are called from the gateway's loop. The thread runs its own
    loop with ``_supervise``: ``kopf.operator`` again and again (after a pause) until the stop
    flag is raised.
    """

    def __init__(
        self,
        *,
        login: Login,
        namespace: str,
        version: str,
        on_sandbox: SandboxCallback,
        on_core_event: CoreEventCallback,
        error_backoffs: Iterable[float] = DEFAULT_ERROR_BACKOFFS,
    ) -> None:
        self._login = login
        self._namespace = namespace
        self._version = version
        self._on_sandbox = on_sandbox
        self._on_core_event = on_core_event
        self._error_backoffs = tuple(error_backoffs)
        self.health = WatchHealth(collection_path(version, namespace))
        self._thread: threading.Thread | None = None
        self._gateway_loop: asyncio.AbstractEventLoop | None = None
        self._finished: asyncio.Future[None] | None = None  # in the gateway's loop
        self._closing = threading.Event()
        self._kopf_loop: asyncio.AbstractEventLoop | None = None
        self._stop_flag: asyncio.Event | None = None  # in kopf's loop
        self._running = False  # a kopf run has raised its ready flag and not ended

    @property
    def ready(self) -> bool:
        alive = self._thread is not None and self._thread.is_alive()
        return alive and self._running and self.health.up

    async def start(self) -> None:
        if self._thread is not None or self._closing.is_set():
            return
        self._gateway_loop = asyncio.get_running_loop()
        self._finished = self._gateway_loop.create_future()
        self._thread = threading.Thread(target=self._run_thread, name="kopf", daemon=True)
        self._thread.start()

    async def close(self) -> None:
        """Raise kopf's stop flag and wait (up to ``STOP_SECONDS``) for its thread to end."""
        self._closing.set()
        kopf_loop, stop_flag = self._kopf_loop, self._stop_flag
        if kopf_loop is not None and stop_flag is not None:
            with contextlib.suppress(RuntimeError):  # kopf's loop has already closed
                kopf_loop.call_soon_threadsafe(stop_flag.set)
        if self._finished is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._finished), STOP_SECONDS)
        except TimeoutError:
            log.error("kopf did not stop within %.0f s; leaving its thread behind", STOP_SECONDS)

    # ---- kopf's thread -------------------------------------------------------------------

    def _run_thread(self) -> None:
        try:
            asyncio.run(self._supervise())
        except Exception:
            log.exception("kopf's thread failed")
        finally:
            self.health.set(False, quiet=True)
            self._notify_finished()

    def _notify_finished(self) -> None:
        finished, loop = self._finished, self._gateway_loop
        if finished is None or loop is None:
            return

        def resolve() -> None:
            if not finished.done():
                finished.set_result(None)

        with contextlib.suppress(RuntimeError):  # the gateway's loop is gone: nobody waits
            loop.call_soon_threadsafe(resolve)

    async def _supervise(self) -> None:
        """Run kopf until the stop flag is raised; restart it with a backoff if it ends."""
        stop_flag = asyncio.Event()
        self._stop_flag = stop_flag
        self._kopf_loop = asyncio.get_running_loop()  # published after the flag exists
        if self._closing.is_set():  # close() came before this loop existed
            stop_flag.set()
        failures = 0
        while not stop_flag.is_set():
            started = time.monotonic()
            await self._run_once(stop_flag)
            if stop_flag.is_set():
                return
            if time.monotonic() - started > HEALTHY_RUN_SECONDS:
                failures = 0
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            failures += 1
            log.error("kopf stopped unexpectedly; restarting it in %.0f s", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_flag.wait(), delay)

    async def _run_once(self, stop_flag: asyncio.Event) -> None:
        """One run of kopf, reporting ``running`` from its ready flag until it ends.

        kopf normally ends within milliseconds of its stop flag. Raised while kopf is still
        starting, though, the flag leaves some of its discovery requests waiting for a new
        login that never comes, and kopf then waits 5 s for them before giving up. So the run
        is cancelled ``STOP_GRACE_SECONDS`` after the flag: cancelling the task that runs
        ``kopf.operator`` is the termination kopf documents for an operator off the main
        thread, and kopf then cancels what is left at once. Both helper tasks exist before
        ``kopf.operator`` starts, so kopf does not count them as its own.
        """
        ready_flag = asyncio.Event()
        became_ready = asyncio.create_task(self._mark_running(ready_flag))
        operator = asyncio.create_task(self._operate(stop_flag, ready_flag), name="kopf")
        deadline = asyncio.create_task(self._cancel_after_grace(stop_flag, operator))
        try:
            await asyncio.wait({operator})
        finally:
            became_ready.cancel()
            deadline.cancel()
            self._running = False
            self.health.set(False, quiet=True)
        if operator.cancelled():
            log.info("kopf was cancelled %.1f s after its stop flag", STOP_GRACE_SECONDS)
        elif operator.exception() is not None:
            log.error("kopf failed", exc_info=operator.exception())

    @staticmethod
    async def _cancel_after_grace(stop_flag: asyncio.Event, operator: asyncio.Task[None]) -> None:
        await stop_flag.wait()
        await asyncio.sleep(STOP_GRACE_SECONDS)
        operator.cancel()

    async def _mark_running(self, ready_flag: asyncio.Event) -> None:
        await ready_flag.wait()
        self._running = True

    async def _operate(self, stop_flag: asyncio.Event, ready_flag: asyncio.Event) -> None:
        await kopf.operator(
            registry=self._registry(),
            settings=operator_settings(self._error_backoffs),
            standalone=True,
            namespaces=[self._namespace],
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )

    # ---- kopf registry -------------------------------------------------------------------

    def _registry(self) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()
        kopf.on.login(registry=registry)(self._login_handler)
        kopf.on.event(GROUP, self._version, PLURAL, registry=registry)(self._sandbox_handler)
        kopf.on.event("v1", "events", registry=registry)(self._core_event_handler)
        return registry

    async def _login_handler(self, **_: Any) -> kopf.AiohttpSession:
        """Our credentials, on a session that reports the Sandbox stream's health.

        kopf calls this again after a 401 and closes the sessions it no longer uses.
        """
        info = await connection_info(await self._login())
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
            headers={"User-Agent": WATCH_USER_AGENT, **info.as_http_headers()},
            proxy=info.proxy_url,
            trust_env=info.trust_env,
            trace_configs=[self.health.trace_config],
        )
        return kopf.AiohttpSession(
            server=info.server, aiohttp_session=session, default_namespace=self._namespace
        )

    async def _sandbox_handler(self, event: kopf.RawEvent, **_: Any) -> None:
        self._hand_over(self._on_sandbox, event.get("type"), dict(event["object"]))

    async def _core_event_handler(self, event: kopf.RawEvent, **_: Any) -> None:
        if event.get("type") != "DELETED":
            self._hand_over(self._on_core_event, dict(event["object"]))

    def _hand_over(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback`` in the gateway's loop, in the order kopf delivered the events."""
        if self._gateway_loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the gateway's loop is closing
            self._gateway_loop.call_soon_threadsafe(callback, *args)
