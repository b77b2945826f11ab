"""``shellgate serve``: the gateway process.

One asyncio loop runs the gRPC server, the HTTP probe/metrics server, the driver watch loop,
the sweep and the store pinger. Nothing here assumes it is the only replica: every replica
serves reads and writes, watches the driver and sweeps, and they agree through CAS alone.
SIGTERM or SIGINT stops it within ``SHUTDOWN_SECONDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from shellgate.api import openshell_pb2, openshell_pb2_grpc
from shellgate.controller.context import Gateway
from shellgate.controller.drivers.base import ComputeDriver
from shellgate.controller.health import HealthState, start_http
from shellgate.controller.intents import run_intent_loop
from shellgate.controller.metrics import Metrics
from shellgate.controller.service import OpenShellService
from shellgate.controller.watch import run_watch_loop
from shellgate.store import ConfigurationError, connect

log = logging.getLogger("shellgate.serve")

DEFAULT_DATABASE_URL = "sqlite:///./.shellgate/shellgate.db"
SHUTDOWN_SECONDS = 10.0
GRPC_GRACE_SECONDS = 5.0
SERVICE_NAME = openshell_pb2.DESCRIPTOR.services_by_name["OpenShell"].full_name


@dataclass
class ServeConfig:
    database_url: str = DEFAULT_DATABASE_URL
    listen: str = "127.0.0.1:8080"
    http_listen: str = "127.0.0.1:9090"
    driver: str = "local"
    replica_id: str = field(default_factory=socket.gethostname)
    log_format: str = "text"
    state_dir: str = "./.shellgate"
    namespace: str = ""
    sandbox_image: str = ""
    sweep_interval: float = 60.0


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def add_serve_command(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the gateway")
    options: list[tuple[str, str, str, str]] = [
        ("--database-url", "SHELLGATE_DATABASE_URL", DEFAULT_DATABASE_URL, "database URL"),
        ("--listen", "SHELLGATE_LISTEN", "127.0.0.1:8080", "gRPC listen address"),
        ("--http-listen", "SHELLGATE_HTTP_LISTEN", "127.0.0.1:9090", "/healthz, /readyz, /metrics"),
        ("--driver", "SHELLGATE_DRIVER", "local", "compute driver: local or kubernetes"),
        ("--replica-id", "SHELLGATE_REPLICA_ID", socket.gethostname(), "this replica's name"),
        ("--log-format", "SHELLGATE_LOG_FORMAT", "text", "text or json"),
        ("--state-dir", "SHELLGATE_STATE_DIR", "./.shellgate", "local driver working directory"),
        ("--namespace", "SHELLGATE_NAMESPACE", "", "kubernetes: namespace of Sandbox objects"),
        ("--sandbox-image", "SHELLGATE_SANDBOX_IMAGE", "", "kubernetes: default sandbox image"),
        ("--sweep-interval", "SHELLGATE_SWEEP_INTERVAL", "60", "seconds between sweeps"),
    ]
    for flag, env, default, text in options:
        serve.add_argument(
            flag, default=_env(env, default), help=f"{text} ({env}; default %(default)s)"
        )
    serve.set_defaults(run=run_serve)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    if args.driver not in ("local", "kubernetes"):
        raise ConfigurationError(f"--driver must be local or kubernetes, got {args.driver!r}")
    if args.log_format not in ("text", "json"):
        raise ConfigurationError(f"--log-format must be text or json, got {args.log_format!r}")
    try:
        sweep = float(args.sweep_interval)
    except ValueError as exc:
        raise ConfigurationError(f"--sweep-interval must be a number: {exc}") from None
    for flag, address in (("--listen", args.listen), ("--http-listen", args.http_listen)):
        split_address(address, flag)
    return ServeConfig(
        database_url=args.database_url,
        listen=args.listen,
        http_listen=args.http_listen,
        driver=args.driver,
        replica_id=args.replica_id,
        log_format=args.log_format,
        state_dir=args.state_dir,
        namespace=args.namespace,
        sandbox_image=args.sandbox_image,
        sweep_interval=sweep,
    )


def split_address(address: str, flag: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigurationError(f"{flag} must be HOST:PORT, got {address!r}")
    return host.strip("[]"), int(port)


def run_serve(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    configure_logging(config.log_format)
    asyncio.run(serve(config))
    return 0


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(log_format: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def build_driver(config: ServeConfig) -> ComputeDriver:
    if config.driver == "kubernetes":
        from shellgate.controller.drivers.kubernetes import KubernetesDriver

        return KubernetesDriver.from_config(config)
    from shellgate.controller.drivers.local import LocalDriver

    return LocalDriver(state_dir=Path(config.state_dir), replica_id=config.replica_id)


async def start_grpc(gw: Gateway, listen: str) -> tuple[grpc.aio.Server, Any, int]:
    """Start the gRPC server; returns it, its health servicer and the bound port."""
    server = grpc.aio.server()
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
    port = server.add_insecure_port(listen)
    if port == 0:
        raise ConfigurationError(f"cannot listen on {listen}")
    await server.start()
    await health.set(SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, health, port


async def serve(
    config: ServeConfig,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[Gateway], Awaitable[None]] | None = None,
) -> None:
    """Run until ``stop`` is set or SIGTERM/SIGINT arrives."""
    stop = stop or asyncio.Event()
    _install_signal_handlers(stop)
    metrics = Metrics()
    store = await connect(config.database_url, observer=metrics)
    driver = build_driver(config)
    gw = Gateway(store=store, driver=driver, metrics=metrics, replica_id=config.replica_id)
    health_state = HealthState(gw)
    tasks: list[asyncio.Task[Any]] = []
    server = runner = None
    try:
        events = driver.events()  # subscribe first: start() may already emit
        await driver.start()
        tasks.append(asyncio.create_task(run_watch_loop(gw, events), name="driver-watch"))
        if driver.routes_by_owner:
            tasks.append(asyncio.create_task(run_intent_loop(gw), name="intents"))
        tasks.append(asyncio.create_task(health_state.ping_forever(), name="store-ping"))
        tasks += _extra_loops(gw, config)
        server, health, _port = await start_grpc(gw, config.listen)
        host, port = split_address(config.http_listen, "--http-listen")
        runner = await start_http(health_state, host, port)
        log.info(
            "shellgate serving gRPC on %s, HTTP on %s (driver %s, %s store, replica %s)",
            config.listen,
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
        await _shutdown(server, runner, tasks, driver, store)


def _extra_loops(gw: Gateway, config: ServeConfig) -> list[asyncio.Task[Any]]:
    from shellgate.controller.sweep import run_sweep_loop

    return [asyncio.create_task(run_sweep_loop(gw, config.sweep_interval), name="sweep")]


async def _shutdown(
    server: Any, runner: Any, tasks: list[asyncio.Task[Any]], driver: ComputeDriver, store: Any
) -> None:
    async def steps() -> None:
        if server is not None:
            await server.stop(GRPC_GRACE_SECONDS)
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


def _install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
