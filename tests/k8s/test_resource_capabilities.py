"""The resource capabilities the Kubernetes driver reports in GetGatewayInfo are the ones its
pods honour: each capability it claims changes the container's resources, and the one it
does not claim (a GPU with no count, "pick a default device") changes nothing."""

from __future__ import annotations

from shellgate.api import openshell_pb2
from shellgate.controller.drivers.kubernetes.manifest import (
    GPU_RESOURCE,
    container_resources,
    resource_capabilities,
)


def spec_with(
    limits: dict[str, str] | None = None, gpus: int | None = None
) -> openshell_pb2.SandboxSpec:
    spec = openshell_pb2.SandboxSpec()
    if limits:
        spec.template.resources.update({"limits": limits})
    if gpus is not None:
        spec.resource_requirements.gpu.SetInParent()
        if gpus:
            spec.resource_requirements.gpu.count = gpus
    return spec


def test_every_claimed_capability_reaches_the_container() -> None:
    claimed = resource_capabilities()
    limits = container_resources(spec_with({"cpu": "2", "memory": "1Gi"}, gpus=3))["limits"]
    assert claimed.cpu.limit_supported and limits["cpu"] == "2"
    assert claimed.memory.limit_supported and limits["memory"] == "1Gi"
    assert claimed.gpu.count_selection_supported and limits[GPU_RESOURCE] == "3"


def test_default_gpu_selection_is_not_claimed_because_nothing_selects_one() -> None:
    assert not resource_capabilities().gpu.default_selection_supported
    assert container_resources(spec_with(gpus=0)) == {}
