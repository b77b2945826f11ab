"""kopf inside ``shellgate serve``: the watch half of the Kubernetes driver.

Every replica runs kopf in the gateway's own event loop, standalone (no peering), with its own
``kopf.OperatorRegistry`` holding ``@kopf.on.event`` handlers only. Event handlers keep no
progress and write nothing back, so kopf never patches an object and replicas never fight over
one; the Role needs no ``patch`` for kopf's sake and, with event posting off, no ``create`` on
events. Scanning is off as well, so kopf needs no cluster-wide list of namespaces or CRDs: it
serves the one namespace it is given and the resources discovery showed at start.

**Handlers** hand the raw object to the driver's callbacks and return; they do no I/O. The
driver turns them into ``DriverEvent``s and the gateway's watch loop writes the store.

**Lifecycle.** kopf's own entry points are not used as is: ``kopf.operator()`` cancels every
task of the loop that was created after it started (the gRPC server included) when it stops,
and it takes over SIGINT/SIGTERM from the gateway. So this module spawns kopf's tasks with
``kopf.spawn_tasks`` (keeping the gateway's signal handlers), supervises them, restarts them
with a capped backoff if one ever ends, and stops only its own tasks. kopf's "ultimate exit"
timer (a SIGKILL some minutes after an unclean stop) is switched off: it would kill the gateway.
kopf's request retries are made endless (``RetryForever``): by default a watch that still fails
after kopf's last retry ends kopf's whole orchestrator, whereas an API outage should only make the
watch "not connected" until it is over.

**Health.** kopf says nothing about whether its watch streams are connected; it retries
quietly. It does let a login handler supply the HTTP session it uses
(``kopf.AiohttpSession``), so ours carries an aiohttp ``TraceConfig`` that watches the
requests of the Sandbox watch stream: a watch request that got response headers with a 2xx
status means connected; a new watch request (kopf reconnecting), a failed one, or a failed
listing means not connected until a watch request succeeds again. ``WatchHealth.up`` is what
``watch_ready`` (and so ``/readyz``) reports. A stream that dies quietly mid-body is noticed
when kopf reconnects (at once, or after ``inactivity_timeout`` for a silent stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import aiohttp
import kopf

from shellgate.controller.drivers.k8s.client import WATCH_USER_AGENT, Login, open_session
from shellgate.controller.drivers.k8s.manifest import (
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


class WatchHealth:
    """Whether kopf's Sandbox watch stream is connected, seen through its HTTP requests.

    Only requests to ``collection`` (the namespace's Sandbox collection path) count: a watch
    request (``watch=true``) that got a 2xx answer makes it up; starting another watch
    request, or any failure of a request there (listing included), makes it down.
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
    return settings


class KopfWatch:
    """Runs and supervises kopf for one namespace and one agent-sandbox version."""

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
        self._sessions: list[aiohttp.ClientSession] = []
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        running = self._supervisor is not None and not self._supervisor.done()
        return running and self.health.up

    async def start(self) -> None:
        if self._supervisor is None:
            _running.add(self)
            self._supervisor = asyncio.create_task(self._supervise(), name="kopf-supervisor")

    async def close(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
        _running.discard(self)
        for session in self._sessions:
            await session.close()
        self._sessions.clear()

    # ---- supervision ---------------------------------------------------------------------

    async def _supervise(self) -> None:
        failures = 0
        while True:
            stop = asyncio.Event()
            started = time.monotonic()
            earlier = asyncio.all_tasks()
            tasks = await self._spawn_unless_cancelled(stop)
            try:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                _log_exit(done)
            finally:
                await _stop(tasks, stop)
                await self._stop_leftovers(earlier)
                self.health.set(False, quiet=True)
            if time.monotonic() - started > HEALTHY_RUN_SECONDS:
                failures = 0
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS) - 1)]
            failures += 1
            log.error("kopf stopped unexpectedly; restarting it in %.0f s", delay)
            await asyncio.sleep(delay)

    async def _stop_leftovers(self, earlier: set[asyncio.Task[Any]]) -> None:
        """Cancel kopf tasks its root tasks left behind (kopf's own "hung tasks" cleanup).

        A root task that fails (rather than being cancelled) can leave the watchers it spawned
        running. They are recognised as tasks running kopf code that did not exist before
        this run started. With another ``KopfWatch`` running in the loop (tests only) the
        tasks cannot be told apart, and nothing is cancelled.
        """
        if _running - {self}:
            return
        leftovers = [t for t in asyncio.all_tasks() - earlier if _runs_kopf(t) and not t.done()]
        if leftovers:
            await _stop(leftovers, asyncio.Event())

    async def _spawn_unless_cancelled(self, stop: asyncio.Event) -> list[asyncio.Task[Any]]:
        """Spawn kopf's tasks; if cancelled meanwhile, stop whatever was spawned, then raise.

        ``kopf.spawn_tasks`` creates its tasks and then yields once; a cancellation landing
        there would otherwise leave them running with nobody to stop them.
        """
        spawning = asyncio.ensure_future(self._spawn(stop))
        try:
            return await asyncio.shield(spawning)
        except asyncio.CancelledError:
            await _stop(await spawning, stop)
            raise

    async def _spawn(self, stop: asyncio.Event) -> list[asyncio.Task[Any]]:
        with _signal_handlers_kept():
            tasks = await kopf.spawn_tasks(
                registry=self._registry(),
                settings=operator_settings(self._error_backoffs),
                standalone=True,
                namespaces=[self._namespace],
                stop_flag=stop,
            )
        return list(tasks)

    # ---- kopf registry -------------------------------------------------------------------

    def _registry(self) -> kopf.OperatorRegistry:
        registry = kopf.OperatorRegistry()
        kopf.on.login(registry=registry)(self._login_handler)
        kopf.on.event(GROUP, self._version, PLURAL, registry=registry)(self._sandbox_handler)
        kopf.on.event("v1", "events", registry=registry)(self._core_event_handler)
        return registry

    async def _login_handler(self, **_: Any) -> kopf.AiohttpSession:
        info = await self._login()
        session = open_session(
            info, user_agent=WATCH_USER_AGENT, trace_configs=[self.health.trace_config]
        )
        self._sessions = [s for s in self._sessions if not s.closed]
        self._sessions.append(session)
        return kopf.AiohttpSession(
            server=info.server, aiohttp_session=session, default_namespace=self._namespace
        )

    async def _sandbox_handler(self, event: kopf.RawEvent, **_: Any) -> None:
        self._on_sandbox(event.get("type"), dict(event["object"]))

    async def _core_event_handler(self, event: kopf.RawEvent, **_: Any) -> None:
        if event.get("type") != "DELETED":
            self._on_core_event(dict(event["object"]))


_running: weakref.WeakSet[KopfWatch] = weakref.WeakSet()
_KOPF_DIR = os.path.dirname(kopf.__file__)


def _runs_kopf(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and code.co_filename.startswith(_KOPF_DIR)


def _log_exit(done: set[asyncio.Task[Any]]) -> None:
    for task in done:
        if task.cancelled():
            log.error("kopf task %s was cancelled", task.get_name())
        elif task.exception() is not None:
            log.error("kopf task %s failed", task.get_name(), exc_info=task.exception())
        else:
            log.error("kopf task %s ended", task.get_name())


async def _stop(tasks: list[asyncio.Task[Any]], stop: asyncio.Event) -> None:
    """Raise kopf's stop flag (so it stops cleanly), cancel its tasks and wait for them."""
    stop.set()
    for task in tasks:
        task.cancel()
    # Shielded: a cancellation of the caller must not leave kopf's tasks running.
    gathering = asyncio.gather(*tasks, return_exceptions=True)
    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(asyncio.shield(gathering), STOP_SECONDS)


@contextlib.contextmanager
def _signal_handlers_kept() -> Iterator[None]:
    """Keep kopf from replacing the gateway's SIGINT/SIGTERM handlers.

    ``kopf.spawn_tasks`` installs its own (which would stop kopf, not the gateway) when it runs
    in the main thread. While it runs, the loop's ``add_signal_handler`` is shadowed by a no-op
    for those two signals.
    """
    loop = asyncio.get_running_loop()
    original = loop.add_signal_handler

    def add_signal_handler(sig: int, callback: Callable[..., object], *args: Any) -> None:
        if sig in (signal.SIGINT, signal.SIGTERM):
            return
        original(sig, callback, *args)

    loop.add_signal_handler = add_signal_handler  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        del loop.add_signal_handler
