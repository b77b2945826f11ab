"""``shellgate serve``: the gateway process.

One asyncio loop runs the gRPC server, the HTTP probe/metrics server, the reconcile loops
(fed by driver events, the store's change feed and a periodic resync) and the store pinger.
Nothing here assumes it is the only replica: every replica serves reads and writes and
reconciles everything, and they agree through CAS alone.
SIGTERM or SIGINT stops it within ``SHUTDOWN_SECONDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from shellgate.api import openshell_pb2, openshell_pb2_grpc
from shellgate.controller.app.health import HealthState, start_http
from shellgate.controller.app.keys import load_keyring
from shellgate.controller.app.logs import configure_logging
from shellgate.controller.app.options import (
    ServeOptions,
    add_serve_command,
    advertised_address,
    options_from_args,
    split_address,
)
from shellgate.controller.app.security import Security, configure_security
from shellgate.controller.auth.authenticate import AuthenticateCalls, Authenticator
from shellgate.controller.auth.modes import auth_modes_of
from shellgate.controller.auth.principal import ANONYMOUS_ADMIN, Principal
from shellgate.controller.auth.tls import CertificateReloader, server_credentials
from shellgate.controller.drivers.base import ComputeDriver
from shellgate.controller.gateway import Gateway
from shellgate.controller.limits import Limits
from shellgate.controller.metrics import Metrics
from shellgate.controller.reconcile.loops import Reconcilers, attach_reconcilers
from shellgate.controller.service.decoding import RejectUndecodableRequests
from shellgate.controller.service.servicer import OpenShellService
from shellgate.store import (
    DEFAULT_WORKSPACE,
    ConfigurationError,
    StoreError,
    StoreTimeouts,
    connect,
    store_for_url,
)
from shellgate.store.secrets import SecretSealer

log = logging.getLogger("shellgate.serve")

SHUTDOWN_SECONDS = 10.0
GRPC_GRACE_SECONDS = 5.0
SERVICE_NAME = openshell_pb2.DESCRIPTOR.services_by_name["OpenShell"].full_name


def add_command(commands: Any) -> None:
    """Register ``shellgate serve`` on the CLI's subcommands."""
    add_serve_command(commands, run_serve)


def run_serve(args: argparse.Namespace) -> int:
    config = options_from_args(args)
    configure_logging(config.log_format)
    asyncio.run(serve(config))
    return 0


def build_driver(config: ServeOptions) -> ComputeDriver:
    if config.driver == "kubernetes":
        from shellgate.controller.drivers.kubernetes import KubernetesDriver

        return KubernetesDriver.from_config(config)
    from shellgate.controller.drivers.local import LocalDriver

    return LocalDriver(state_dir=Path(config.state_dir), replica_id=config.replica_id)


def grpc_server_options(limits: Limits) -> list[tuple[str, int]]:
    """Channel arguments that bound what one client can hold or send (see ``Limits``)."""
    return [
        ("grpc.max_receive_message_length", limits.max_receive_message_bytes),
        ("grpc.max_send_message_length", limits.max_send_message_bytes),
        ("grpc.keepalive_time_ms", limits.keepalive_seconds * 1000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.max_connection_age_ms", limits.max_connection_age_seconds * 1000),
        ("grpc.max_connection_age_grace_ms", limits.max_connection_age_grace_seconds * 1000),
        # Clients may ping an idle connection (the SDK keeps watches alive) but not flood it.
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


async def start_grpc(
    gw: Gateway,
    listen: str,
    *,
    authenticators: Sequence[Authenticator] = (),
    anonymous: Principal | None = ANONYMOUS_ADMIN,
    tls: CertificateReloader | None = None,
) -> tuple[grpc.aio.Server, Any, int]:
    """Start the gRPC server; returns it, its health servicer and the bound port.

    Calls are authenticated by ``authenticators``; a call with no credentials runs as
    ``anonymous``, or is refused when that is None. With ``tls`` the port speaks only TLS,
    with the certificates ``tls`` reads (and re-reads when their files change). The
    ``default`` workspace exists before the first call is served.
    """
    await ensure_default_workspace(gw)
    gw.auth_modes = auth_modes_of(authenticators, anonymous)
    server = grpc.aio.server(
        # Authentication first: an unauthenticated caller learns nothing, not even whether
        # its request decodes.
        interceptors=[
            AuthenticateCalls(authenticators, anonymous=anonymous),
            RejectUndecodableRequests(gw.metrics),
        ],
        options=grpc_server_options(gw.limits),
        maximum_concurrent_rpcs=gw.limits.max_concurrent_rpcs,
    )
    openshell_pb2_grpc.add_OpenShellServicer_to_server(  # type: ignore[no-untyped-call]
        OpenShellService(gw), server
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    if tls is None:
        port = server.add_insecure_port(listen)
    else:
        port = server.add_secure_port(listen, server_credentials(tls))
    if port == 0:
        raise ConfigurationError(f"cannot listen on {listen}")
    await server.start()
    await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, health, port


async def ensure_default_workspace(gw: Gateway) -> None:
    """Create ``default`` unless it exists (``MUST_CREATE``; a replica that loses the race to
    another starting at the same time just finds it)."""
    if await gw.repos.workspaces.ensure(DEFAULT_WORKSPACE):
        log.info("created the %r workspace", DEFAULT_WORKSPACE)


async def serve(
    config: ServeOptions,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Gateway], Awaitable[None]] | None = None,
) -> None:
    """Run until ``stop`` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    _install_signal_handlers(stop)
    security = configure_security(config.security, config.listen)
    try:
        await _serve(config, security, stop, on_ready)
    finally:
        await security.aclose()


async def _serve(
    config: ServeOptions,
    security: Security,
    stop: asyncio.Event,
    on_ready: Callable[[Gateway], Awaitable[None]] | None,
) -> None:
    metrics = Metrics()
    keyring = load_keyring(config.encryption_key_file, store_for_url(config.database_url))
    store = await connect(
        config.database_url,
        observer=metrics,
        timeouts=StoreTimeouts(
            statement=config.limits.database_statement_timeout_seconds,
            acquire=config.limits.database_acquire_timeout_seconds,
        ),
    )
    driver = build_driver(config)
    gw = Gateway(
        store=store,
        driver=driver,
        metrics=metrics,
        replica_id=config.replica_id,
        sealer=SecretSealer(keyring),
        limits=config.limits,
    )
    health_state = HealthState(gw, warnings=security.warnings)
    tasks: list[asyncio.Task[Any]] = []
    server = runner = None
    loops: Reconcilers | None = None
    try:
        # before start(): the driver may already emit. The local driver starts a process or
        # fails at once, so only Kubernetes sandboxes get a provisioning deadline.
        deadline = config.provisioning_deadline if config.driver == "kubernetes" else 0.0
        loops = attach_reconcilers(gw, provisioning_deadline_seconds=deadline)
        await driver.start()
        tasks.append(asyncio.create_task(health_state.ping_forever(), name="store-ping"))
        server, health, grpc_port = await start_grpc(
            gw,
            config.listen,
            authenticators=security.authenticators,
            anonymous=security.anonymous,
            tls=security.tls,
        )
        # Serving first: the first resync pass reads every row (incrementally, a page at a
        # time, yielding in between), and nothing a handler does waits for it. Driver events
        # emitted meanwhile wait in the bounded queue (a dropped one is repaired by the pass).
        loops.start(config.sweep_interval)
        tasks.append(asyncio.create_task(fill_phase_column(gw), name="fill-phase-column"))
        if security.issuer_keys is not None:
            security.issuer_keys.prefetch()
        await record_address(gw, advertised_address(config, grpc_port))
        host, port = split_address(config.http_listen, "--http-listen")
        runner = await start_http(health_state, host, port)
        log.info(
            "shellgate serving gRPC on %s (%s, authentication: %s), HTTP on %s "
            "(driver %s, %s store, replica %s)",
            config.listen,
            "plaintext" if security.tls is None else "TLS",
            ", ".join(security.modes) or "none",
            config.http_listen,
            driver.name,
            store.backend,
            config.replica_id,
        )
        if on_ready is not None:
            await on_ready(gw)
        await stop.wait()
        log.info("shutting down")
        await health.enter_graceful_shutdown()
    finally:
        await _shutdown(server, runner, tasks, loops, driver, store)


async def _shutdown(
    server: Any,
    runner: Any,
    tasks: list[asyncio.Task[Any]],
    loops: Reconcilers | None,
    driver: ComputeDriver,
    store: Any,
) -> None:
    async def steps() -> None:
        if server is not None:
            await server.stop(GRPC_GRACE_SECONDS)
        if loops is not None:
            await loops.stop()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
        await driver.close()
        await store.close()

    try:
        await asyncio.wait_for(steps(), SHUTDOWN_SECONDS - 1)
    except TimeoutError:
        log.error("shutdown took longer than %.0f s; exiting anyway", SHUTDOWN_SECONDS)
    log.info("stopped")


async def record_address(gw: Gateway, address: str) -> None:
    """Write where this replica serves gRPC into its heartbeat row (by CAS, as every beat
    does) at once, rather than at the next beat, so calls can be forwarded here."""
    gw.grpc_address = address
    if not gw.driver.routes_by_owner:
        return  # any replica serves any sandbox: nothing is forwarded
    try:
        await gw.repos.replicas.beat(gw.replica_id, address)
    except StoreError as exc:
        log.warning("cannot record this replica's address yet (the next beat will): %s", exc)


async def fill_phase_column(gw: Gateway) -> None:
    """Rows written by a version that did not keep the phase in the status column get it,
    once, in the background (``SandboxRepository.fill_phase_column``); until then the
    ``shellgate_sandboxes`` gauge counts them as "unknown"."""
    try:
        filled = await gw.repos.sandboxes.fill_phase_column()
    except StoreError as exc:
        log.warning("could not fill the phase column of older sandbox rows: %s", exc)
        return
    if filled:
        log.info("filled the phase column of %d older sandbox rows", filled)


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
