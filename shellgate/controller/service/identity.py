"""Who am I, and what is this gateway: GetCurrentUser and GetGatewayInfo.

GetCurrentUser answers the identity the authentication interceptor verified, never anything
the client claims; its ``subject`` is what workspace memberships name. GetGatewayInfo tells a
platform admin the version, the compute driver (with the resource limits it honours) and how
callers authenticate (``auth_modes``, given by whoever starts the server with the
authenticators, so the answer is what is enforced rather than what was configured somewhere
else).
"""

from __future__ import annotations

from collections.abc import Sequence

from shellgate.api import openshell_pb2
from shellgate.controller.auth.principal import current_principal
from shellgate.controller.gateway import Gateway

AUTHENTICATION_EXTENSION = "authentication"


async def get_current_user(
    gw: Gateway, request: openshell_pb2.GetCurrentUserRequest
) -> openshell_pb2.GetCurrentUserResponse:
    principal = current_principal()
    return openshell_pb2.GetCurrentUserResponse(
        subject=principal.subject,
        display_name=principal.display_name,
        roles=sorted(principal.roles),
        scopes=sorted(principal.scopes or ()),
        identity_provider=principal.provider,
    )


def resource_capabilities(driver: object) -> openshell_pb2.ResourceCapabilities:
    """The resource limits the driver honours. A driver that declares none (the local driver
    runs a plain process, with no CPU, memory or GPU control) honours none: a client must not
    be told a limit holds that nothing enforces."""
    declared = getattr(driver, "resource_capabilities", None)
    if declared is None:
        return openshell_pb2.ResourceCapabilities()
    capabilities: openshell_pb2.ResourceCapabilities = declared()
    return capabilities


def gateway_info(
    gw: Gateway, version: str, auth_modes: Sequence[str]
) -> openshell_pb2.GetGatewayInfoResponse:
    driver = gw.driver.name
    return openshell_pb2.GetGatewayInfoResponse(
        status=openshell_pb2.SERVICE_STATUS_HEALTHY,
        gateway_version=version,
        compute_drivers=[
            openshell_pb2.ComputeDriverInfo(
                name=driver,
                capabilities=openshell_pb2.ComputeDriverCapabilities(
                    driver_name=driver,
                    driver_version=version,
                    resource_capabilities=resource_capabilities(gw.driver),
                ),
            )
        ],
        extensions=[
            openshell_pb2.NegotiatedExtensionInfo(
                kind=openshell_pb2.EXTENSION_KIND_GATEWAY_INTERCEPTOR,
                configured_name=AUTHENTICATION_EXTENSION,
                implementation_name="shellgate",
                implementation_version=version,
                supported_capabilities=list(auth_modes),
            )
        ],
    )
