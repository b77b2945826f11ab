"""The Kubernetes compute driver: one agent-sandbox ``Sandbox`` object per sandbox.

``driver`` holds ``KubernetesDriver`` (the ``ComputeDriver``); ``manifest`` maps sandboxes to
``Sandbox`` objects and back (pure functions); ``client`` holds the credentials and the API
access over ``kubernetes_asyncio``; ``watch`` runs kopf in a thread of its own as the driver's
watch, with its health observed through kopf's HTTP session.
"""

from shellgate.controller.drivers.kubernetes.driver import KubernetesDriver

__all__ = ["KubernetesDriver"]
