"""shellgate: a leader-free control plane for agent sandboxes (OpenShell gateway API)."""

__version__ = "0.1.0"
