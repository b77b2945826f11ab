"""The parts of the Kubernetes driver (``shellgate.controller.drivers.kubernetes``).

``manifest`` maps sandboxes to agent-sandbox ``Sandbox`` objects and back (pure functions);
``client`` holds credentials and a small aiohttp REST client; ``operator`` runs kopf as the
driver's watch, with its health observed through kopf's HTTP session.
"""
