"""GetGatewayInfo reports the resource limits the compute driver honours, over real gRPC: a
driver that declares none (like the local driver, a plain process) is reported with none."""

from __future__ import annotations

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.kubernetes.manifest import resource_capabilities
from shellgate.store import Store
from tests.support.fake_driver import FakeDriver
from tests.support.gateway import running_gateway


class LimitingDriver(FakeDriver):
    def resource_capabilities(self) -> openshell_pb2.ResourceCapabilities:
        return resource_capabilities()


async def reported(store: Store, driver: FakeDriver) -> openshell_pb2.ResourceCapabilities:
    async with running_gateway(store, driver) as gw:
        info = await gw.stub.GetGatewayInfo(openshell_pb2.GetGatewayInfoRequest())
    (compute,) = info.compute_drivers
    assert compute.capabilities.driver_name == driver.name
    return compute.capabilities.resource_capabilities


async def test_the_drivers_resource_capabilities_are_reported(store: Store) -> None:
    assert await reported(store, LimitingDriver()) == resource_capabilities()


async def test_a_driver_that_declares_none_is_reported_with_none(store: Store) -> None:
    nothing = await reported(store, FakeDriver())
    assert nothing == openshell_pb2.ResourceCapabilities()
    assert not nothing.cpu.limit_supported and not nothing.gpu.count_selection_supported
