"""Fixtures for the Kubernetes driver: kmock in the test's loop, the driver, a gateway.

The ``kmock`` fixture (kmock's pytest plugin) is a running emulator; ``kmock_options`` makes it
our ``SandboxEmulator``. ``emulator`` registers agent-sandbox ``sandboxes`` (v1beta1) in
discovery; a test that wants v1alpha1 only uses ``emulator_versions`` through
``@pytest.mark.parametrize("emulator_versions", [...], indirect=True)``. ``driver`` is a
started ``KubernetesDriver`` logged in to kmock with a fixed ``Configuration`` (host: kmock),
and ``k8s_gateway`` adds a store, the reconcile loops and a gRPC server, as the gateway tests do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from kmock import KubernetesEmulator

from shellgate.api import openshell_pb2, openshell_pb2_grpc
from shellgate.controller.app.serve import start_grpc
from shellgate.controller.drivers.kubernetes import KubernetesDriver
from shellgate.controller.drivers.kubernetes.client import configuration_for, fixed_login
from shellgate.controller.gateway import Gateway
from shellgate.controller.metrics import Metrics
from shellgate.controller.reconcile.loops import attach_reconcilers
from shellgate.reconcilers.pod_policy import PodPolicy, PodSettings
from shellgate.store import Store
from tests.support.k8s_emulator import NAMESPACE, SandboxEmulator, serve_sandboxes
from tests.support.sealing import new_sealer

FAST_BACKOFFS = (0.1, 0.2, 0.5)


async def until(predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Poll a synchronous condition every 20 ms; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        await asyncio.sleep(0.02)


async def until_async(probe: Callable[[], Awaitable[bool]], *, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await probe():
        if loop.time() > deadline:
            raise AssertionError(f"condition not reached within {timeout} s")
        await asyncio.sleep(0.02)


@pytest.fixture
def kmock_options() -> dict[str, Any]:
    return {"cls": SandboxEmulator}


@pytest.fixture
def emulator_versions(request: pytest.FixtureRequest) -> tuple[str, ...]:
    return tuple(getattr(request, "param", ("v1beta1",)))


@pytest.fixture
def emulator(kmock: KubernetesEmulator, emulator_versions: tuple[str, ...]) -> KubernetesEmulator:
    serve_sandboxes(kmock, emulator_versions)
    return kmock


TEST_POD_SETTINGS = PodSettings(policy=PodPolicy(runtime_classes=frozenset({"gvisor"})))
"""The defaults, plus one runtime class the operator allows (the tests ask for gvisor)."""


def make_driver(
    url: str,
    *,
    image: str = "registry.example/sandbox:1",
    pod_settings: PodSettings = TEST_POD_SETTINGS,
) -> KubernetesDriver:
    return KubernetesDriver(
        login=fixed_login(configuration_for(url)),
        namespace=NAMESPACE,
        sandbox_image=image,
        error_backoffs=FAST_BACKOFFS,
        discovery_delays=(0.1,),
        pod_settings=pod_settings,
    )


@pytest.fixture
async def driver(emulator: KubernetesEmulator) -> AsyncIterator[KubernetesDriver]:
    started = make_driver(str(emulator.url).rstrip("/"))
    await started.start()
    try:
        await until(lambda: started.watch_ready)
        yield started
    finally:
        await started.close()


@dataclass
class K8sGateway:
    gateway: Gateway
    driver: KubernetesDriver
    stub: openshell_pb2_grpc.OpenShellStub
    emulator: KubernetesEmulator

    async def sandbox(self, name: str) -> openshell_pb2.Sandbox:
        response = await self.stub.GetSandbox(openshell_pb2.GetSandboxRequest(name=name))
        return response.sandbox

    async def phase_of(self, name: str) -> int:
        return (await self.sandbox(name)).status.phase

    async def wait_phase(self, name: str, phase: int, *, timeout: float = 10.0) -> None:
        async def reached() -> bool:
            return await self.phase_of(name) == phase

        try:
            await until_async(reached, timeout=timeout)
        except AssertionError:
            now = openshell_pb2.SandboxPhase.Name(await self.phase_of(name))
            wanted = openshell_pb2.SandboxPhase.Name(phase)
            raise AssertionError(f"{name}: phase {now}, expected {wanted}") from None

    def driver_events(self, result: str) -> float:
        labels = {"driver": "kubernetes", "result": result}
        value = self.gateway.metrics.registry.get_sample_value(
            "shellgate_driver_events_total", labels
        )
        return float(value or 0.0)


@contextlib.asynccontextmanager
async def running_k8s_gateway(
    store: Store, emulator: KubernetesEmulator, *, pod_settings: PodSettings = TEST_POD_SETTINGS
) -> AsyncIterator[K8sGateway]:
    driver = make_driver(str(emulator.url).rstrip("/"), pod_settings=pod_settings)
    gateway = Gateway(
        sealer=new_sealer(), store=store, driver=driver, metrics=Metrics(), replica_id="test"
    )
    loops = attach_reconcilers(gateway)
    await driver.start()
    loops.start(0)
    await asyncio.wait_for(loops.settled(), 10)
    server, _health, port = await start_grpc(gateway, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        await until(lambda: driver.watch_ready)
        yield K8sGateway(gateway, driver, openshell_pb2_grpc.OpenShellStub(channel), emulator)
    finally:
        await channel.close()
        await server.stop(0)
        await loops.stop()
        await driver.close()


@pytest.fixture
async def k8s(store: Store, emulator: KubernetesEmulator) -> AsyncIterator[K8sGateway]:
    async with running_k8s_gateway(store, emulator) as running:
        yield running
