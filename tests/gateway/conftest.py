"""Gateway test fixtures live in tests/conftest.py (``gw``) and tests/support/gateway.py."""

from tests.support.gateway import Running, running_gateway

__all__ = ["Running", "running_gateway"]
